"""What the Jira client reads out of Jira's answers, checked before it is used.

Atlassian's spec makes every property of these answers optional and lets `fields` hold
anything, so a schema-valid answer may lack an id or carry a string where an object was
expected. Each model names only what the client reads and insists only on what it cannot do
without (an issue's id and key, a user's accountId); everything else it ignores. A failed
check becomes `UnexpectedAnswerError` (`core.http.read_answer`), never a bare `TypeError`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints, TypeAdapter


def _number_as_text(value: Any) -> Any:
    # Jira sends ids as strings; a number is taken as its digits (a JSON true is no id).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


IdText = Annotated[str, StringConstraints(min_length=1), BeforeValidator(_number_as_text)]
Key = Annotated[str, StringConstraints(min_length=1)]


class Answer(BaseModel):
    """Part of an answer: unknown keys are ignored, known ones must have the right type."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class UserAnswer(Answer):
    """`GET /myself`."""

    accountId: IdText
    displayName: str | None = None
    emailAddress: str | None = None
    active: bool | None = None
    accountType: str | None = None


class UserEntry(Answer):
    """An item of `GET /user/search`: without an accountId it can match nobody."""

    accountId: IdText | None = None
    emailAddress: str | None = None
    accountType: str | None = None


class CreatedIssueAnswer(Answer):
    """`POST /issue`, or one item of a bulk create's `issues`."""

    id: IdText
    key: Key


class ElementErrors(Answer):
    errorMessages: list[Any] | None = None
    errors: dict[str, Any] | None = None


class BulkErrorAnswer(Answer):
    """One item of a bulk create's `errors`."""

    failedElementNumber: int
    status: int | None = None
    elementErrors: ElementErrors | None = None


class BulkAnswer(Answer):
    """`POST /issue/bulk`, 201 or an all-failed 400: the two lists, read item by item."""

    issues: list[Any] | None = None
    errors: list[Any] | None = None


class IssueAnswer(Answer):
    """`GET /issue/{key}`, and each issue of a search page."""

    model_config = ConfigDict(extra="allow", frozen=True)  # a search hands the rest on

    id: IdText
    key: Key
    fields: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None


class CommentAnswer(Answer):
    id: IdText


class AuthorAnswer(Answer):
    accountId: str | None = None


class CommentItemAnswer(Answer):
    """One comment of `GET /issue/{key}/comment`."""

    id: IdText
    author: AuthorAnswer | None = None
    body: Any = None
    created: str | None = None


class CommentPageAnswer(Answer):
    comments: list[CommentItemAnswer] | None = None
    total: int | None = None


class StatusCategoryAnswer(Answer):
    key: str | None = None


class StatusAnswer(Answer):
    name: str | None = None
    statusCategory: StatusCategoryAnswer | None = None


class TransitionAnswer(Answer):
    id: IdText
    name: str | None = None
    to: StatusAnswer | None = None


class TransitionsAnswer(Answer):
    transitions: list[TransitionAnswer] | None = None


class SearchPageAnswer(Answer):
    """A page of `POST /search/jql`."""

    issues: list[IssueAnswer] | None = None
    nextPageToken: str | None = None
    isLast: bool | None = None


class BulkFetchAnswer(Answer):
    """`POST /issue/bulkfetch`: the issues Jira has among those asked for (one it does not have
    is left out), and those it could not read now (`issueErrors`)."""

    issues: list[IssueAnswer] | None = None
    issueErrors: list[Any] | None = None


USER = TypeAdapter(UserAnswer)
USER_LIST = TypeAdapter(list[UserEntry])
CREATED_ISSUE = TypeAdapter(CreatedIssueAnswer)
BULK = TypeAdapter(BulkAnswer)
BULK_ERROR = TypeAdapter(BulkErrorAnswer)
ISSUE = TypeAdapter(IssueAnswer)
COMMENT = TypeAdapter(CommentAnswer)
COMMENT_PAGE = TypeAdapter(CommentPageAnswer)
TRANSITIONS = TypeAdapter(TransitionsAnswer)
SEARCH_PAGE = TypeAdapter(SearchPageAnswer)
BULK_FETCH = TypeAdapter(BulkFetchAnswer)
