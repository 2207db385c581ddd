#!/bin/bash
# Halving, the grid, halving again, on both built-in datasets, one after the other on a quiet machine.
set -u
here=$(cd "$(dirname "$0")" && pwd)
{ uptime; bash $here/setup.sh; bash $here/run.sh b; bash $here/grid.sh; bash $here/run.sh c; uptime; } 2>&1
