"""Where each kind the operator manages lives in the API."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from voxtral_operator.api import models


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [prefix]
        if namespace is not None:
            parts.append(f"namespaces/{quote(namespace)}")
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name))
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)


ENDPOINTS = Resource(models.GROUP, models.VERSION, models.PLURAL, models.KIND)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
SERVICES = Resource("", "v1", "services", "Service")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
PDBS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
SCALED_OBJECTS = Resource("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject")
PODS = Resource("", "v1", "pods", "Pod")
SECRETS = Resource("", "v1", "secrets", "Secret")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
CERTIFICATES = Resource("cert-manager.io", "v1", "certificates", "Certificate")
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
JOBS = Resource("batch", "v1", "jobs", "Job")
DAEMON_SETS = Resource("apps", "v1", "daemonsets", "DaemonSet")

# Children the operator watches and applies (server-side apply; stale ones deleted).
CHILDREN: tuple[Resource, ...] = (
    PVCS,
    DEPLOYMENTS,
    SERVICES,
    PDBS,
    NETWORK_POLICIES,
    SCALED_OBJECTS,
    SERVICE_ACCOUNTS,
    ROLES,
    ROLE_BINDINGS,
    CERTIFICATES,
    JOBS,
    DAEMON_SETS,
)
# Children the operator only creates, never reads (the gateway's backend key: the operator holds no
# read of Secrets); the garbage collector deletes them with the endpoint.
CREATED_ONLY: tuple[Resource, ...] = (SECRETS,)
BY_KIND: dict[str, Resource] = {r.kind: r for r in (*CHILDREN, *CREATED_ONLY)}
