# genreg's base image: the debootstrapped bookworm (python3 3.11, pip, ca-certificates) that
# registry/packaging/image.py imports as genreg-rootfs:bookworm. Built with `genreg containerize`.
FROM genreg-rootfs:bookworm

# The host's extra CA certificates (none where it has none): pip inside image builds must trust
# a TLS-inspecting proxy the way the host does.
COPY ca/ /usr/local/share/ca-certificates/
# The marker file makes Debian's pip refuse system installs; BentoML's stock templates install
# uv with the system pip, so a base image for BentoML must allow it. `python` is what
# BentoML's entrypoint calls for its legacy commands.
RUN update-ca-certificates >/dev/null \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -sf python3 /usr/bin/python \
    && python3 --version && pip --version && command -v useradd
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    UV_NATIVE_TLS=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
