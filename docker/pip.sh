#!/bin/sh
# pip inside `docker build`, behind a TLS-intercepting proxy or a private index: BuildKit secrets
# are mounted (never stored in a layer) at /run/secrets/<id> for the one RUN that asks for them:
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt   -> PIP_CERT (the proxy's CA bundle)
#   --secret id=pipconf,src=$HOME/.config/pip/pip.conf       -> PIP_CONFIG_FILE (index-url, cert=...)
# Without them, pip runs with its defaults. The pip in use is the venv's (/opt/venv).
set -eu
if [ -s /run/secrets/ca ]; then
  export PIP_CERT=/run/secrets/ca
  # build backends fetched by pip in isolated build environments use requests/urllib too
  export REQUESTS_CA_BUNDLE=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca
fi
if [ -s /run/secrets/pipconf ]; then
  export PIP_CONFIG_FILE=/run/secrets/pipconf
fi
exec /opt/venv/bin/python -m pip "$@"
