"""Where a base image comes from: a local file, a verified download, or a bootstrap from packages."""
