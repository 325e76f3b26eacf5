"""Jira Cloud: the async REST client and Atlassian Document Format helpers."""

from core.jira.adf import adf_to_text, bullet_list, doc, paragraph, text_to_adf
from core.jira.client import (
    BulkCreated,
    BulkFailure,
    BulkResult,
    Comment,
    CreatedIssue,
    Issue,
    IssueLink,
    IssuePayload,
    JiraClient,
    JiraUser,
    Transition,
    TransitionNotAvailableError,
    issue_payload,
    parse_jira_error,
    subtask_payload,
)

__all__ = [
    "BulkCreated",
    "BulkFailure",
    "BulkResult",
    "Comment",
    "CreatedIssue",
    "Issue",
    "IssueLink",
    "IssuePayload",
    "JiraClient",
    "JiraUser",
    "Transition",
    "TransitionNotAvailableError",
    "adf_to_text",
    "bullet_list",
    "doc",
    "issue_payload",
    "paragraph",
    "parse_jira_error",
    "subtask_payload",
    "text_to_adf",
]
