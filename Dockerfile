# sluice: a fleet worker image. Build: docker build -t sluice .
# Run:   docker run -v $PWD/lake.toml:/etc/sluice/lake.toml -p 9464:9464 sluice
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY fixtures fixtures
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
USER sluice
EXPOSE 9464
# SIGTERM drains: /readyz turns 503, then buffered records are committed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sluice", "--log-format", "json"]
CMD ["serve", "--config", "/etc/sluice/lake.toml"]
