"""The API docs page works offline: `/docs` leads to one Swagger UI page whose every asset and whose
OpenAPI schema come from the service itself, and whose schema marks image uploads as files
(`format: binary`), so that "Try it out" offers a file picker. Against a real `bentoml serve`."""

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import torch

from pipeline.backbones import Classifier, build
from pipeline.export import export_checked
from tests.conftest import model_card
from tests.servers import running_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`bentoml serve` of a tiny model exported by the pipeline; yields the server's root URL."""
    path = tmp_path_factory.mktemp("docs-model") / "model.onnx"
    card = model_card(image_size=32, backbone="mobilenet_v3_small")
    torch.manual_seed(0)
    backbone = build(card.backbone, "none", len(card.classes))
    model = Classifier(backbone.model.body, backbone.model.head, card.mean, card.std).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    export_checked(model, card, images, path, opset=18, tolerance=1e-4)
    with running_service({"SERVING_MODEL": str(path)}) as url:
        yield url


class References(HTMLParser):
    """The URLs a page loads: scripts, stylesheets and icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        attributes = dict(attrs)
        if tag in ("script", "img") and attributes.get("src"):
            self.urls.append(attributes["src"])
        if tag == "link" and attributes.get("href"):
            self.urls.append(attributes["href"])


def docs_page(server: str) -> httpx.Response:
    page = httpx.get(f"{server}/docs", follow_redirects=True, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    return page


def openapi_url(page: httpx.Response) -> str:
    """The schema the page's Swagger UI reads (its config's `url`), resolved against the page."""
    configured = re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", page.text)
    assert len(configured) == 1, configured
    return urljoin(str(page.url), configured[0])


def test_docs_and_the_root_lead_to_one_docs_page(server):
    for path in ("/docs", "/"):
        answer = httpx.get(f"{server}{path}", timeout=30)
        assert answer.is_redirect, (path, answer.status_code)
        assert urljoin(f"{server}{path}", answer.headers["location"]) == f"{server}/v1/docs"
    assert "swagger-ui" in docs_page(server).text


def test_every_asset_of_the_docs_page_comes_from_the_service(server):
    page = docs_page(server)
    parser = References()
    parser.feed(page.text)
    urls = [urljoin(str(page.url), reference) for reference in parser.urls] + [openapi_url(page)]
    assert len(urls) >= 4  # the stylesheet, the favicon, Swagger UI's script, the schema
    assert not re.findall(r"https?://", page.text)  # no other host named anywhere on the page
    host = urlsplit(server).netloc
    for url in urls:
        assert urlsplit(url).netloc == host, url
        answer = httpx.get(url, timeout=30)
        assert answer.status_code == 200 and answer.content, url
    scripts = [url for url in urls if url.endswith(".js")]
    assert any("SwaggerUIBundle" in httpx.get(url, timeout=30).text for url in scripts)


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def test_the_schema_marks_every_uploaded_image_as_a_file(server):
    schema = httpx.get(openapi_url(docs_page(server)), timeout=30).json()
    uploads = {}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if form is None:
                continue
            for name, field in resolve(schema, form["schema"])["properties"].items():
                field = resolve(schema, field)
                if field.get("type") == "array":
                    field = resolve(schema, field["items"])
                if field.get("type") == "string" and {"contentMediaType", "format"} & field.keys():
                    uploads[(path, name)] = field.get("format")
    assert uploads == {("/classify", "image"): "binary", ("/classify_batch", "images"): "binary"}
    assert schema["servers"] == [{"url": "/v1"}]
    info = schema["info"]
    assert "image classifier" in info["title"].lower() and "BentoML" not in info["description"]
    assert "/v1/classify" in info["description"] and info["version"] != "0.1.0"  # FastAPI's default
