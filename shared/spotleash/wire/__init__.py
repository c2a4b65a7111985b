"""Every message and file format that crosses a process boundary: events, the package and snapshot
manifests, the instance agent's config, the local stack's env file. Parsing never crashes."""
