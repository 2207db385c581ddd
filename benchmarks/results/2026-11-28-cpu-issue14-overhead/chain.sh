#!/bin/bash
# Halving, the grid, halving again, on both built-in datasets, one after the other on a quiet machine,
# with the first sitting's scripts in the scratch folder /tmp/halv3.
set -u
first=$(cd "$(dirname "$0")/../2026-11-28-cpu-issue14" && pwd)
export HALV=/tmp/halv3
{ uptime; bash $first/setup.sh; bash $first/run.sh f; bash $first/grid.sh; bash $first/run.sh g; uptime; } 2>&1
