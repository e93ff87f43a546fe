"""Test and demo machinery for voxtral-operator; never shipped with the product.

A Kubernetes API server stand-in (apiserver), a sandbox that plays the kubelet (sandbox), process
helpers for tests (harness), a vLLM simulator (simulator) and the local demo (demo).
"""
