#!/usr/bin/env bash
# The Debian package as an operator meets it: built with `cargo deb`, installed with dpkg on this machine, given
# its certificates under the packaged names (here a dev PKI stands in for the province's), and its installed
# config checked by the installed binary as the service's user; then purged. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked

# Built as on a machine without Internet (README "Installing without Internet"): every dependency vendored — the
# only step that reaches a registry, again only when Cargo.lock changed —, then compiled offline with a Cargo home
# that holds nothing but the vendored sources' config (no registry cache to fall back on).
vendor="$PWD/target/vendor"
if ! cmp -s Cargo.lock "$vendor/.Cargo.lock"; then
  rm -rf "$vendor"
  cargo vendor --locked "$vendor" >/dev/null 2>target/vendor.log || { cat target/vendor.log; exit 1; }
  cp Cargo.lock "$vendor/.Cargo.lock"
fi
offline=$(mktemp -d)
printf '[source.crates-io]\nreplace-with = "vendored-sources"\n\n[source.vendored-sources]\ndirectory = "%s"\n' "$vendor" \
  > "$offline/config.toml"
CARGO_HOME="$offline" cargo build --release --offline --locked --quiet
rm -rf "$offline"
echo "offline build from vendored sources: $(ls "$vendor" | wc -l) crates, target/release/lgsp-gateway"
deb=$(cargo deb --no-build 2>/dev/null | tail -n 1)
echo "package: $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
dpkg -i "$deb"
trap 'dpkg --purge lgsp-gateway >/dev/null || true' EXIT

test "$(stat -c '%U:%G %a' /etc/lgsp-gateway/gateway.toml)" = "root:lgsp-gateway 640"
test "$(stat -c '%U %a' /var/lib/lgsp-gateway)" = "lgsp-gateway 750"
systemd-analyze verify /lib/systemd/system/lgsp-gateway.service

pki=$(mktemp -d)
/usr/bin/lgsp-gateway certs init --dir "$pki" >/dev/null
put() { install -m 0640 -o root -g lgsp-gateway "$pki/$1" "/etc/lgsp-gateway/pki/$2"; }
put lgsp-server.pem server.pem
put lgsp-server.key server.key
put ca.pem client-ca.pem
put ca.crl.pem client-ca.crl.pem
put lgsp-client.pem upstream.pem
put lgsp-client.key upstream.key
put ca.pem upstream-ca.pem
put signing-ca.pem signing-ca.pem
openssl rand -hex 32 > /etc/lgsp-gateway/admin.token
chgrp lgsp-gateway /etc/lgsp-gateway/admin.token && chmod 0640 /etc/lgsp-gateway/admin.token
rm -rf "$pki"

runuser -u lgsp-gateway -- /usr/bin/lgsp-gateway check-config /etc/lgsp-gateway/gateway.toml
echo "debian package: installed, its config checks"
