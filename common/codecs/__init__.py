"""Layer codecs, registered by explicit wire id (see `layercast.common.registry`)."""
