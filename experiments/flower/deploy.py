r"""A secure Flower deployment of prism-jax on one machine: TLS everywhere, SuperNode
authentication with registered public keys, one SuperNode per client.

    python -m experiments.flower.deploy --workdir=runs/deploy --clients=10

writes the certificates and keys under ``workdir/secrets``, starts the SuperLink and the
SuperNodes, registers the nodes' public keys, runs ``flwr run deploy/flower`` and stops
everything when the run ends (metrics: ``workdir/scores.npz.jsonl``). Across machines the
same commands run on each site (docs/deployment.md); only the addresses
change and each SuperNode keeps its own private key. The functions here are what the
deployment test drives.
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time

from absl import app, flags

from experiments.flower import client as flower_client
from prism_jax.flower import worker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP_DIR = os.path.join(ROOT, "deploy", "flower")


def write_tls(directory: str, hosts=("localhost", "127.0.0.1")) -> dict[str, str]:
  """A private CA and a SuperLink certificate for ``hosts`` (DNS names or IPs; the
  SuperLink reaches its own runtime at 127.0.0.1, so keep that one). Returns the paths
  ``ca`` (for SuperNodes and the ``flwr`` CLI), ``cert`` and ``key`` (the SuperLink's)."""
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
  os.makedirs(directory, exist_ok=True)
  now = datetime.datetime.now(datetime.timezone.utc)
  valid = dict(not_valid_before=now - datetime.timedelta(minutes=5),
               not_valid_after=now + datetime.timedelta(days=365))

  def cert(subject, issuer, key, sign_key, *extensions):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
    for ext, critical in extensions:
      b = b.add_extension(ext, critical)
    return b.sign(sign_key, hashes.SHA256())

  name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
  ca_key, srv_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(
      ec.SECP384R1())
  usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False,
               key_agreement=False, encipher_only=False, decipher_only=False)
  ca = cert(name("prism-jax CA"), name("prism-jax CA"), ca_key, ca_key,
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage),
             True))
  sans = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h)
          for h in hosts]
  srv = cert(name(hosts[0]), name("prism-jax CA"), srv_key, ca_key,
             (x509.SubjectAlternativeName(sans), False),
             (x509.BasicConstraints(ca=False, path_length=None), True),
             (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
             (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))
  paths = {k: os.path.join(directory, f) for k, f in
           (("ca", "ca.crt"), ("cert", "server.pem"), ("key", "server.key"))}
  pem = serialization.Encoding.PEM
  _write(paths["ca"], ca.public_bytes(pem))
  _write(paths["cert"], srv.public_bytes(pem))
  _write(paths["key"], srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), private=True)
  return paths


def write_node_key(directory: str, name: str) -> tuple[str, str]:
  """A SuperNode's ECDSA P-384 key pair in OpenSSH format (what ``ssh-keygen -t ecdsa -b
  384`` writes). Returns ``(private, public)`` paths; only the public one leaves the node."""
  from cryptography.hazmat.primitives import serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  key = ec.generate_private_key(ec.SECP384R1())
  private, public = os.path.join(directory, name), os.path.join(directory, name + ".pub")
  _write(private, key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()), private=True)
  _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH) + b"\n")
  return private, public


def cli_env(workdir: str, address: str, ca: str, extra: dict | None = None) -> dict:
  """The environment for ``flwr`` (its ``config.toml`` under ``workdir/flwr``: the
  SuperLink ``local`` at ``address``, verified against ``ca``) and for the apps."""
  home = os.path.join(workdir, "flwr")
  os.makedirs(home, exist_ok=True)
  with open(os.path.join(home, "config.toml"), "w") as f:
    f.write(f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "{address}"\n'
            f'root-certificates = "{os.path.abspath(ca)}"\n')
  return {**os.environ, "FLWR_HOME": home, **(extra or {})}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_superlink(workdir: str, tls: dict, port: int, env: dict) -> subprocess.Popen:
  """The SuperLink with TLS and SuperNode authentication (only registered keys join), no
  runtime dependency installation (offline sites)."""
  return _spawn(["flower-superlink", "--ssl-ca-certfile", tls["ca"], "--ssl-certfile",
                 tls["cert"], "--ssl-keyfile", tls["key"], "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                 "--port", str(port)], os.path.join(workdir, "superlink.log"), env)


def register(public_key: str, env: dict, timeout: float = 60.0) -> dict:
  """Registers a SuperNode's public key with the SuperLink (``flwr supernode register``),
  retrying while the SuperLink starts. Returns the CLI's JSON reply."""
  deadline, out = time.monotonic() + timeout, None
  while time.monotonic() < deadline:
    out = subprocess.run(["flwr", "supernode", "register", public_key, "--format", "json"],
                         env=env, capture_output=True, text=True)
    try:
      reply = json.loads(out.stdout)
    except json.JSONDecodeError:
      reply = {}
    if reply.get("success"):
      return reply
    time.sleep(1.0)
  raise RuntimeError(f"could not register {public_key}: {out.stdout}{out.stderr}")


def start_supernode(workdir: str, tls: dict, superlink: str, client_id: int,
                    num_clients: int, private_key: str, env: dict) -> subprocess.Popen:
  """The SuperNode of client ``client_id`` (its ``partition-id``), authenticated with its
  ``private_key`` over TLS."""
  return _spawn(["flower-supernode", "--superlink", superlink, "--root-certificates",
                 tls["ca"], "--auth-supernode-private-key", private_key, "--port",
                 str(free_port()), "--node-config",
                 f"partition-id={client_id} num-partitions={num_clients}"],
                os.path.join(workdir, f"supernode-{client_id}.log"), env)


def run_app(workdir: str, env: dict, resume: bool = False) -> subprocess.Popen:
  """``flwr run deploy/flower local --stream``: the ServerApp runs the rounds (with
  ``resume``, from its last checkpoint: ``--run-config resume=true``)."""
  return _spawn(["flwr", "run", APP_DIR, "local", "--stream"] + (
      ["--run-config", "resume=true"] if resume else []), os.path.join(workdir, "run.log"), env)


def stop(*procs: subprocess.Popen) -> None:
  """SIGTERM (a SuperNode then leaves the federation at once), SIGKILL after 10 s."""
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGTERM)
  for p in procs:
    try:
      p.wait(10)
    except subprocess.TimeoutExpired:
      os.killpg(p.pid, signal.SIGKILL)


def _spawn(cmd, log: str, env: dict) -> subprocess.Popen:
  with open(log, "ab") as f:   # own process group: stop() ends the apps it started too
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)


def _write(path: str, data: bytes, private: bool = False) -> None:
  with open(path, "wb") as f:
    f.write(data)
  if private:
    os.chmod(path, 0o600)


def _is_ip(host: str) -> bool:
  try:
    ipaddress.ip_address(host)
    return True
  except ValueError:
    return False


@dataclasses.dataclass
class Federation:
  """A running local federation (:func:`start_federation`): the SuperLink, one
  authenticated SuperNode per client (``nodes``), the apps' environment ``env`` and every
  process started, which :meth:`stop` ends with the nodes' workers."""
  workdir: str
  config: str
  tls: dict
  address: str
  env: dict
  procs: list
  nodes: dict = dataclasses.field(default_factory=dict)

  @property
  def secrets(self) -> str:
    return os.path.join(self.workdir, "secrets")

  @property
  def out(self) -> str:
    return self.env["PRISM_OUT"]

  def node(self, client_id: int, num_clients: int, private_key: str) -> subprocess.Popen:
    """Starts (or restarts) client ``client_id``'s SuperNode with ``private_key``."""
    proc = start_supernode(self.workdir, self.tls, self.address, client_id, num_clients,
                           private_key, self.env)
    self.nodes[client_id] = proc
    self.procs.append(proc)
    return proc

  def run(self, resume: bool = False) -> subprocess.Popen:
    proc = run_app(self.workdir, self.env, resume)
    self.procs.append(proc)
    return proc

  def stop(self) -> None:
    stop(*reversed(self.procs))
    worker.stop_workers(flower_client.worker_key(self.config))


def start_federation(workdir: str, clients: int, config: str,
                     extra_env: dict | None = None) -> Federation:
  """Certificates and node keys under ``workdir/secrets``, the SuperLink with TLS and node
  authentication, each node's public key registered and one SuperNode per client; the apps
  build from ``config`` and write to ``workdir/scores.npz``."""
  workdir = os.path.abspath(workdir)
  tls, port = write_tls(os.path.join(workdir, "secrets")), free_port()
  address = f"127.0.0.1:{port}"
  env = cli_env(workdir, address, tls["ca"], {
      "PRISM_CONFIG": config, "PRISM_OUT": os.path.join(workdir, "scores.npz"),
      **(extra_env or {})})
  fed = Federation(workdir, config, tls, address, env,
                   [start_superlink(workdir, tls, port, env)])
  try:
    for cid in range(clients):
      private, public = write_node_key(fed.secrets, f"node{cid}")
      register(public, env)
      fed.node(cid, clients, private)
  except BaseException:
    fed.stop()
    raise
  return fed


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/deploy", "certificates, keys, logs and the run's output")
flags.DEFINE_integer("clients", 10, "SuperNodes (one per client of the config)")
flags.DEFINE_string("config", os.path.join(ROOT, "experiments", "configs", "mnist_cpu.py"),
                    "config file (path.py or path.py:arg) that server and nodes build from")


def main(argv):
  del argv
  fed = start_federation(FLAGS.workdir, FLAGS.clients, FLAGS.config)
  try:
    sys.exit(fed.run().wait())
  finally:
    fed.stop()


if __name__ == "__main__":
  app.run(main)
