"""The per-endpoint gateway (`voxtral-operator gateway`): keys, a central queue, work-aware dispatch to vLLM."""

# Where the gateway's pod mounts each Secret it reads, as SECRETS_DIR/NAME/KEY (the kubelet's files).
SECRETS_DIR = "/var/run/voxtral/secrets"
