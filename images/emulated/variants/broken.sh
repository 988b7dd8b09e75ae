#!/bin/sh
# Test variant "broken": smarter-dns gets a config it refuses, so the health gate must fail
# this slot (with a shorter deadline than the real image, to keep the test short).
set -eu
echo "VARIANT=broken" > "$1/etc/smarter-variant"
echo 'this is not valid = = toml' > "$1/etc/smarter/smarter-dns.toml"
sed -i 's/^deadline_s = .*/deadline_s = 45/' "$1/etc/smarter/health-gate.toml"
grep -q '^deadline_s = 45$' "$1/etc/smarter/health-gate.toml"
