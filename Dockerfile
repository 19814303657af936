# trolleyfs in a container. The install steps are scripts/setup.sh, the same the README and CI run.
#
#   docker build -t trolleyfs .
#   docker run --rm --device /dev/fuse --cap-add SYS_ADMIN --security-opt apparmor:unconfined \
#       -v /mnt/pacs:/mnt/pacs:rshared -v trolleyfs-cache:/var/cache/trolleyfs \
#       trolleyfs mount http://pacs:8042/dicom-web /mnt/pacs -f
#
# /dev/fuse and CAP_SYS_ADMIN let the container mount; the rshared bind makes the mount made
# inside the container visible on the host at /mnt/pacs. `docker stop` sends SIGTERM: the daemon
# unmounts and exits. Without arguments the image runs the demo (embedded sample PACS).
FROM debian:12-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/trolleyfs
COPY . .
RUN scripts/setup.sh runtime && rm -rf /var/lib/apt/lists/* /root/.cache

VOLUME /var/cache/trolleyfs
ENTRYPOINT ["/opt/trolleyfs/.venv/bin/trolleyfs"]
CMD ["demo", "/mnt/pacs"]
