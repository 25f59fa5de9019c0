from napari_medgen import hookimpl


@hookimpl
def medgen_register_famlies(register):  # misspelt on purpose: not a known hook
    pass
