# Every Arca program on a minimal Debian (made by debootstrap in
# ops/build-images): the console, the init step that makes credentials,
# the firewall controller (nft, ip) and agents, whose hooks need a shell.
ARG BASE
FROM ${BASE}
COPY arca arca-scheduler arca-firewall arca-media arca-agent /usr/local/bin/
COPY gen-pki init systems.toml /usr/local/lib/arca/
ENV RUST_LOG=info
CMD ["arca", "--help"]
