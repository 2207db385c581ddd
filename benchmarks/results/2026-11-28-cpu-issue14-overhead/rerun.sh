#!/bin/bash
# digits again: the grid (out/grid2), then halving right after it (out/h), at one speed of the machine
# (the first halving runs of chain.sh ran in a slower spell than the grids).
set -u
HALV=/tmp/halv3 DATA=digits TAG=h bash "$(dirname "$0")/../2026-11-28-cpu-issue14-shared/rerun.sh"
