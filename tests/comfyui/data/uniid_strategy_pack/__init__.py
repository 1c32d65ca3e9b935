"""A stand-in for another ComfyUI node pack that adds a UniID rescaling strategy.

It never imports UniID: the strategy is declared in ``UNIID_RESCALERS``, which the UniID pack collects
whenever it lists strategies, so it works whichever pack ComfyUI loads first.
"""


def blend(text_out, ip_out, scale, layer, *, strength):
    """text + scale * strength * ip: a parameterised plain sum."""
    return text_out + ip_out * (scale * strength).to(text_out.dtype)


UNIID_RESCALERS = [{"name": "test_pack_blend", "fn": blend, "params": {"strength": (0.5, 0.0, 2.0)}}]
NODE_CLASS_MAPPINGS: dict = {}
