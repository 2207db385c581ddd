"""Where MLflow keeps runs and the registry: a sqlite file at the project root unless MLFLOW_TRACKING_URI says
otherwise, and whether a tracking server answers (a dead one would hold MLflow's client in retries for minutes)."""

import base64
import os
import urllib.parse
import urllib.request

from pipeline.paths import project_root


def tracking_uri() -> str:
    """Absolute, because `dvc exp run --queue/--temp` runs the stages in a temporary copy of the project
    (DVC_ROOT then points at the real root)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


class TrackingServerUnreachable(RuntimeError):
    """MLFLOW_TRACKING_URI names a server that does not answer."""


def redact(text: str) -> str:
    """`text` (an error message, say) without the tracking URI's password."""
    password = urllib.parse.urlsplit(tracking_uri()).password
    return text.replace(f":{password}@", ":***@") if password else text


def shown_uri() -> str:
    """The tracking URI as it may be printed: user:***@."""
    return redact(tracking_uri())


def check_reachable(timeout_s: float = 5.0) -> None:
    """Raise, naming the URI (never its password), unless the store is local or its server's /health answers."""
    parts = urllib.parse.urlsplit(tracking_uri())
    if parts.scheme not in ("http", "https"):
        return
    # urllib cannot open a URL with user:password@ in it: the credentials go in a header
    health = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    request = urllib.request.Request(f"{health.geturl().rstrip('/')}/health")
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except (OSError, ValueError) as exc:  # refused, timed out, unknown host, an HTTP error status, a bad URL
        raise TrackingServerUnreachable(
            f"MLflow tracking server MLFLOW_TRACKING_URI={shown_uri()} is unreachable ({exc}); start it "
            "or unset MLFLOW_TRACKING_URI for the local sqlite store"
        ) from None
