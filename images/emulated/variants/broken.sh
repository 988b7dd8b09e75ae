#!/bin/sh
# Test variant "broken": smarter-dns never runs (its unit is masked), so the health gate must
# fail this slot (with a shorter deadline than the real image, to keep the test short).
# A bad config alone is not enough: a crash-looping Type=simple unit is briefly "active"
# after each restart, and a gate round can catch it there.
set -eu
echo "VARIANT=broken" > "$1/etc/smarter-variant"
rm -f "$1/etc/systemd/system/multi-user.target.wants/smarter-dns.service"
ln -sf /dev/null "$1/etc/systemd/system/smarter-dns.service"
sed -i 's/^deadline_s = .*/deadline_s = 45/' "$1/etc/smarter/health-gate.toml"
grep -q '^deadline_s = 45$' "$1/etc/smarter/health-gate.toml"
