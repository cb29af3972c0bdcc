# syntax=docker/dockerfile:1
# Weft's image, for those who build with Docker: the same image `make image` builds here
# without a daemon (deploy/image/build). One image runs `weft operator` (the default) and
# `weft control-plane`. A statically linked weft on an empty base, run as a non-root user.
#
#   docker build -t ghcr.io/weft-dev/weft:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# glibc with crt-static: no shared library is loaded at run time, so the runtime image needs
# none.
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p weft \
 && install -m 0755 target/x86_64-unknown-linux-gnu/release/weft /weft

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/weft-dev/weft" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.title="weft" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /weft /weft
USER 65532:65532
ENTRYPOINT ["/weft"]
CMD ["operator"]
