"""Wire models of /v1/models."""

from typing import Literal

from tokserve.schemas.generation import WireModel


class Model(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tokserve"
    max_model_len: int


class ListModelsResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[Model]
