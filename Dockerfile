# pgenrich container image: docker build -t pgenrich . && docker run -p 6432:6432 pgenrich --upstream db:5432
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY mock-aws ./mock-aws
RUN cargo build --release --locked --bin pgenrich

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home pgenrich
COPY --from=build /src/target/release/pgenrich /usr/local/bin/pgenrich
COPY config/pgenrich.example.toml /etc/pgenrich/pgenrich.example.toml
USER pgenrich
ENV PGENRICH_LISTEN=0.0.0.0:6432
EXPOSE 6432
ENTRYPOINT ["/usr/local/bin/pgenrich"]
