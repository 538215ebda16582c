# Headroom in a container: a multi-stage build, a small non-root runtime.
#
#   docker build -t headroom .
#   docker run -p 7878:7878 -v headroom-data:/var/lib/headroom headroom
#
# The image listens on 0.0.0.0:7878 with tokens required (the admin token is generated on
# first start into the data volume and printed once; or pass HEADROOM_API_TOKEN). Mount a config
# at /etc/headroom/headroom.toml; secrets go in the environment (HEADROOM_SECRET_KEY, …).
# `docker stop` sends SIGTERM: in-flight calls and job attempts finish within
# [server] shutdown_grace (30 s), so stop with `-t 45`.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p headroom --bin headroom

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/headroom headroom \
 && install -d -o headroom -g headroom -m 0700 /var/lib/headroom \
 && install -d /etc/headroom
COPY --from=build /src/target/release/headroom /usr/bin/headroom
COPY deploy/docker/headroom.toml /etc/headroom/headroom.toml
USER headroom
WORKDIR /var/lib/headroom
VOLUME /var/lib/headroom
EXPOSE 7878
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/headroom"]
CMD ["serve", "--config", "/etc/headroom/headroom.toml"]
