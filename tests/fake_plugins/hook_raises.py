from napari_medgen import hookimpl


@hookimpl
def medgen_register_families(register):
    raise KeyError("hook exploded")
