"""UniIDIdentityBatch: identities stacked into an identity batch; UniID Apply gives identity i to latent i."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from uniid_core.identity import stack_identities

from .schema import CATEGORY, UniIDNode
from .sockets import UNIID_IDENTITY


class UniIDIdentityBatch(UniIDNode):
    """Join two identities (each one person or already a batch) into one identity batch, in order."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDIdentityBatch",
            display_name="UniID Identity Batch",
            category=CATEGORY,
            description="Stacks identities into an identity batch: UniID Apply gives identity i to latent i "
            "of the batch. Chain the node for more.",
            inputs=[
                UNIID_IDENTITY.Input(
                    "identity_1", tooltip="The first identity (or identity batch): the first latent(s)"
                ),
                UNIID_IDENTITY.Input(
                    "identity_2", tooltip="The identity (or identity batch) for the following latent(s)"
                ),
            ],
            outputs=[
                UNIID_IDENTITY.Output(display_name="identity"),
                io.String.Output(display_name="class_word"),
                io.Int.Output(display_name="count"),
            ],
        )

    @classmethod
    def execute(cls, identity_1, identity_2) -> io.NodeOutput:
        batch = stack_identities([identity_1, identity_2])
        return io.NodeOutput(batch, batch.class_word, batch.count)
