#!/usr/bin/env bash
# Create a development signing PKI for RAUC bundles (never committed; regenerated per build dir):
#   images/rauc/make-dev-ca.sh OUTDIR [NAME]
# writes OUTDIR/ca.cert.pem (the keyring a gateway trusts), OUTDIR/ca.key.pem, and the signing
# pair OUTDIR/signing.cert.pem + OUTDIR/signing.key.pem issued by that CA. Existing files are
# kept, so bundles built later in the same OUTDIR stay installable on images built earlier.
# NAME goes into the subjects (default "SMARTER development"). Production keys: docs/update-keys.md.
set -euo pipefail
out=${1:?usage: make-dev-ca.sh OUTDIR [NAME]}
name=${2:-SMARTER development}
mkdir -p "$out"
cd "$out"
if [ -s ca.cert.pem ] && [ -s signing.cert.pem ] && [ -s signing.key.pem ]; then
    exit 0
fi
umask 077
cat > openssl.cnf <<EOT
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $name
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[signing]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOT
openssl ecparam -name prime256v1 -genkey -noout -out ca.key.pem
openssl req -new -x509 -config openssl.cnf -extensions ca -key ca.key.pem -days 3650 \
    -subj "/CN=$name CA" -out ca.cert.pem
openssl ecparam -name prime256v1 -genkey -noout -out signing.key.pem
openssl req -new -config openssl.cnf -key signing.key.pem -subj "/CN=$name bundle signing" -out signing.csr
openssl x509 -req -in signing.csr -CA ca.cert.pem -CAkey ca.key.pem -CAcreateserial -days 3650 \
    -extfile openssl.cnf -extensions signing -out signing.cert.pem 2>/dev/null
rm -f signing.csr ca.cert.srl
chmod 0644 ca.cert.pem signing.cert.pem
