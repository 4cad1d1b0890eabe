"""Images as data: references, manifests, the local OCI store, auth and the registry client."""
