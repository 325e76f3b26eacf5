"""Every deployment of this service, defined once: served on one host (`python -m deployments`)
or deployed to a work pool."""
