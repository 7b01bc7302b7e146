"""Device models. They never import the vfio-user transport."""
