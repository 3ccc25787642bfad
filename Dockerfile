# pgenrich container image:
#   docker build -t pgenrich .
#   docker run -p 6432:6432 -p 9187:9187 pgenrich --upstream db:5432
# The binary is built with the `dist` profile (stripped, no debug info). It runs as an
# unprivileged user; the admin listener (/metrics, /livez, /readyz) is on at 0.0.0.0:9187 and the
# HEALTHCHECK asks /livez (set PGENRICH_ADMIN_LISTEN="" to turn both off).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY mock-aws ./mock-aws
RUN cargo build --profile dist --locked --bin pgenrich

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --uid 10001 pgenrich
COPY --from=build /src/target/dist/pgenrich /usr/local/bin/pgenrich
COPY config/healthcheck.sh /usr/local/bin/pgenrich-healthcheck
COPY config/pgenrich.example.toml /etc/pgenrich/pgenrich.example.toml
USER 10001
ENV PGENRICH_LISTEN=0.0.0.0:6432 \
    PGENRICH_ADMIN_LISTEN=0.0.0.0:9187
EXPOSE 6432 9187
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/pgenrich-healthcheck"]
ENTRYPOINT ["/usr/local/bin/pgenrich"]
