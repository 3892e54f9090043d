"""Request and response bodies of /v1/spot-checks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SpotCheckCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    image: str = Field(
        description="data:image/png;base64,... (or an http(s) URL when the server allows URLs)"
    )
    question: str = Field(min_length=1, max_length=2000)
    models: list[str] = Field(
        min_length=2, max_length=8, description="Two or more of model:<id>, run:<id>, run:<id>@<step>."
    )
    null_image: Literal["gray", "noise", "blur"] = Field(
        "gray",
        description="A content-free image: 'the language prior alone' (docs/method.md §1)",
    )
    max_tokens: int = Field(16, ge=1, le=64)


class SpotCheckAnswer(BaseModel):
    model: str
    answer: str = Field(description="Greedy answer with the image.")
    null_answer: str = Field(description="Greedy answer with the null image: what the prior alone says.")
    answer_iig: float = Field(description="IIG of the answer: how much it depends on the image.")
    null_answer_iig: float = Field(description="IIG of the null-image answer, on the real image.")
    same_as_prior: bool = Field(description="The answer equals the null-image answer (normalised).")
    seconds: float


class SpotCheckImage(BaseModel):
    sha256: str
    width: int
    height: int
    thumbnail: str = Field(description="A small JPEG data URL.")


class SpotCheckRead(BaseModel):
    id: str
    created_at: datetime
    question: str
    null_image: str
    max_tokens: int
    image: SpotCheckImage
    results: list[SpotCheckAnswer]
