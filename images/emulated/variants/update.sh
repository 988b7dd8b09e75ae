#!/bin/sh
# Test variant "update": the same root file system, marked so the tests can tell the slots apart.
set -eu
echo "VARIANT=update" > "$1/etc/smarter-variant"
