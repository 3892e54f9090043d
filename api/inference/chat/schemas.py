"""OpenAI chat-completions request and response bodies (the subset this service implements).

Fields OpenAI clients send that do not apply here (`user`, `metadata`, ...) are ignored, as OpenAI
does with unknown fields; fields that would change the answer's meaning (`n` > 1, tools) are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infra.db.base import INT64_MAX


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str = Field(description="data:image/png;base64,... (or http(s) when the server allows URLs)")
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
StopSequence = Annotated[str, Field(min_length=1)]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(
        min_length=1, description="model:<id> (base model), run:<id> (newest checkpoint) or run:<id>@<step>"
    )
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Alias of max_tokens (newer clients).")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy decoding; default 1.")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(
        None, ge=0, le=INT64_MAX, description="Makes sampling reproducible (such requests are not batched)."
    )
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=4)] | None = Field(
        None, description="Up to 4 strings that end the answer where they appear."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    tools: list[Any] | None = Field(None, max_length=0, description="Tools are not supported.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
