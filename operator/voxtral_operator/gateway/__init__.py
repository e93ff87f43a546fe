"""The per-endpoint gateway (`voxtral-operator gateway`): keys, a central queue, work-aware dispatch to vLLM."""
