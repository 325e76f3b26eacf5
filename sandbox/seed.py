"""Deterministic, realistic people for the simulators, the demo and the tests.

`seed_people(today=...)` builds a small company: a CEO, department heads reporting to the CEO,
staff reporting to their head, and the cases the sync must handle: future hires inside and
beyond a 14-day onboarding horizon, someone starting today, someone on probation, past
terminations, one future termination, Unicode and apostrophe names, and assigned assets.
The same `(count, today, seed)` always gives the same list.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

EMAIL_DOMAIN = "example.com"
FIRST_ID = 1001
PROBATION = timedelta(days=90)

EXECUTIVE = "Executive"
# department -> (division, positions for staff); heads get "Head of <department>".
DEPARTMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Engineering": (
        "Product",
        ("Software Engineer", "Senior Software Engineer", "QA Engineer", "DevOps Engineer"),
    ),
    "Sales": ("Commercial", ("Account Executive", "Sales Development Representative")),
    "Finance": ("Operations", ("Accountant", "Financial Analyst")),
    "People": ("Operations", ("HR Generalist", "Recruiter")),
    "IT": ("Operations", ("IT Support Engineer", "Systems Administrator")),
    "Marketing": ("Commercial", ("Marketing Manager", "Content Writer")),
    "Customer Support": ("Commercial", ("Support Specialist", "Support Team Lead")),
}
LOCATIONS = ("Kyiv Office", "Warsaw Office", "Lisbon Office", "New York Office", "Remote")
EMPLOYMENT_TYPES = ("Full-Time", "Full-Time", "Full-Time", "Part-Time", "Contractor")
JOB_LEVELS = ("Junior", "Middle", "Middle", "Senior", "Lead")

FIRST_NAMES = (
    ("Olena", "female"),
    ("Marta", "female"),
    ("Anna", "female"),
    ("Sofia", "female"),
    ("Ingrid", "female"),
    ("Priya", "female"),
    ("Chloé", "female"),
    ("Hannah", "female"),
    ("Amara", "female"),
    ("Yuki", "female"),
    ("Andriy", "male"),
    ("Tomasz", "male"),
    ("Lucas", "male"),
    ("Björn", "male"),
    ("Mateo", "male"),
    ("Daniel", "male"),
    ("Kwame", "male"),
    ("Omar", "male"),
    ("Noah", "male"),
    ("Rafael", "male"),
)
LAST_NAMES = (
    "Kovalenko",
    "Nowak",
    "Silva",
    "Müller",
    "Jensen",
    "Patel",
    "Dubois",
    "Schmidt",
    "Okafor",
    "Tanaka",
    "Shevchenko",
    "Wiśniewski",
    "Costa",
    "Lindqvist",
    "García",
    "Cohen",
    "Mensah",
    "Haddad",
    "Smith",
    "Pereira",
)


@dataclass
class SeedAsset:
    """Equipment assigned to a person (PeopleForce Assets): what offboarding must collect."""

    id: int
    category: str  # Laptop, Badge, Phone
    name: str
    code: str
    serial_number: str
    issued_on: date
    returned_on: date | None = None


@dataclass
class SeedPerson:
    """One employee as the simulators hold them: plain names for every reference."""

    id: int
    first_name: str
    last_name: str
    email: str | None  # None: hired without a work email (yet)
    hired_on: date
    department: str
    division: str
    position: str
    location: str
    employment_type: str = "Full-Time"
    job_level: str = "Middle"
    manager_id: int | None = None
    middle_name: str = ""
    personal_email: str | None = None
    gender: str = "female"  # "male" | "female", as webhooks and list items carry it
    date_of_birth: date | None = None
    probation_ends_on: date | None = None
    employee_number: str = ""
    termination_effective_on: date | None = None
    termination_comment: str | None = None
    termination_type: str | None = None
    termination_reason: str | None = None
    termination_eligible_for_rehire: bool | None = None
    fields: dict[str, str | None] = field(default_factory=dict)  # custom fields by internal name
    assets: list[SeedAsset] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> SeedPerson:
        # Every other field is immutable: the simulators copy their people on creation and on
        # each reset, and a company of 100,000 takes a second this way, a minute field by field.
        return replace(self, fields=dict(self.fields), assets=[replace(a) for a in self.assets])

    @property
    def full_name(self) -> str:
        return " ".join(
            part for part in (self.first_name, self.middle_name, self.last_name) if part
        )

    def status_on(self, today: date) -> str:
        """PeopleForce's status as of `today`: hired (not started), probation, employed, terminated."""
        if self.termination_effective_on is not None and self.termination_effective_on <= today:
            return "terminated"
        if self.hired_on > today:
            return "hired"
        if self.probation_ends_on is not None and today < self.probation_ends_on:
            return "probation"
        return "employed"


def email_local_part(first_name: str, last_name: str) -> str:
    """`Zoë Łukasiewicz` -> `zoe.lukasiewicz`: ASCII, lower case, no apostrophes or spaces."""

    def fold(text: str) -> str:
        text = text.translate(str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ß": "ss"}))
        ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        return "".join(ch for ch in ascii_text.lower() if ch.isalnum())

    return f"{fold(first_name)}.{fold(last_name)}".strip(".")


@dataclass
class _Scenario:
    """A person with a fixed role in the story; filled in with generated details."""

    first_name: str
    last_name: str
    department: str
    gender: str = "female"
    email_local: str | None = None  # when the name does not transliterate (李雷)
    hired_in_days: int | None = None  # relative to today; None = years ago
    terminated_in_days: int | None = None
    middle_name: str = ""


# The cases the sync must get right, in the order they are created (after the CEO and heads).
SCENARIOS: tuple[_Scenario, ...] = (
    _Scenario("Zoë", "Łukasiewicz", "Engineering"),
    _Scenario("José", "Núñez", "Sales", gender="male"),
    _Scenario("雷", "李", "IT", gender="male", email_local="li.lei"),
    _Scenario("Siobhán", "O'Brien", "People"),
    _Scenario("Mary", "Smith-Jones", "Finance", middle_name="Anne"),
    _Scenario("Ravi", "Kumar", "Engineering", gender="male", hired_in_days=3),  # inside the horizon
    _Scenario("Elena", "Petrova", "Sales", hired_in_days=10),  # inside the horizon
    _Scenario("Jonas", "Berg", "IT", gender="male", hired_in_days=21),  # beyond the horizon
    _Scenario("Fatima", "Zahra", "Marketing", hired_in_days=45),  # well beyond
    _Scenario("Lena", "Vogel", "Customer Support", hired_in_days=0),  # starts today
    _Scenario("Marco", "Rossi", "Engineering", gender="male", hired_in_days=-30),  # on probation
    _Scenario("Peter", "Hall", "Sales", gender="male", terminated_in_days=-5),
    _Scenario("Grace", "Lee", "Engineering", terminated_in_days=-40),
    _Scenario("Hugo", "Martin", "Finance", gender="male", terminated_in_days=-200),
    _Scenario("Nadia", "Bondarenko", "Engineering", terminated_in_days=7),  # future termination
)


def seed_people(count: int = 40, *, today: date, seed: int = 7) -> list[SeedPerson]:
    """`count` people: CEO, department heads, the scenarios above, then ordinary staff.

    Small counts truncate that list (managers always come before their reports, so nobody is
    left reporting to someone missing).
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    rng = random.Random(seed)
    builder = _Builder(rng, today)

    ceo = builder.person(
        "Alexandra",
        "Reed",
        EXECUTIVE,
        "Management",
        "Chief Executive Officer",
        manager_id=None,
        years_ago=9,
        job_level="Executive",
    )
    heads: dict[str, SeedPerson] = {}
    for department, (division, _) in DEPARTMENTS.items():
        first, gender = rng.choice(FIRST_NAMES)
        heads[department] = builder.person(
            first,
            rng.choice(LAST_NAMES),
            department,
            division,
            f"Head of {department}",
            manager_id=ceo.id,
            years_ago=rng.randint(3, 8),
            gender=gender,
            job_level="Lead",
        )

    for scenario in SCENARIOS:
        if len(builder.people) >= count:
            break
        division, positions = DEPARTMENTS[scenario.department]
        hired_on = (
            today + timedelta(days=scenario.hired_in_days)
            if scenario.hired_in_days is not None
            else None
        )
        person = builder.person(
            scenario.first_name,
            scenario.last_name,
            scenario.department,
            division,
            rng.choice(positions),
            manager_id=heads[scenario.department].id,
            years_ago=rng.randint(1, 6),
            hired_on=hired_on,
            gender=scenario.gender,
            email_local=scenario.email_local,
            middle_name=scenario.middle_name,
        )
        if scenario.terminated_in_days is not None:
            builder.terminate(person, today + timedelta(days=scenario.terminated_in_days))

    while len(builder.people) < count:
        department = rng.choice(list(DEPARTMENTS))
        division, positions = DEPARTMENTS[department]
        first, gender = rng.choice(FIRST_NAMES)
        builder.person(
            first,
            rng.choice(LAST_NAMES),
            department,
            division,
            rng.choice(positions),
            manager_id=heads[department].id,
            years_ago=rng.randint(0, 7),
            gender=gender,
        )

    return builder.people[:count]


class _Builder:
    def __init__(self, rng: random.Random, today: date) -> None:
        self.rng = rng
        self.today = today
        self.people: list[SeedPerson] = []
        self.emails: set[str] = set()
        self.next_asset_id = 5001

    def person(
        self,
        first_name: str,
        last_name: str,
        department: str,
        division: str,
        position: str,
        *,
        manager_id: int | None,
        years_ago: int,
        hired_on: date | None = None,
        gender: str = "female",
        job_level: str | None = None,
        email_local: str | None = None,
        middle_name: str = "",
    ) -> SeedPerson:
        rng = self.rng
        person_id = FIRST_ID + len(self.people)
        if hired_on is None:
            hired_on = self.today - timedelta(days=365 * years_ago + rng.randint(20, 300))
        local = email_local or email_local_part(first_name, last_name)
        email = f"{local}@{EMAIL_DOMAIN}"
        suffix = 2
        while email in self.emails:
            email = f"{local}{suffix}@{EMAIL_DOMAIN}"
            suffix += 1
        self.emails.add(email)
        # Records are created a few weeks before the start date, and edited a little later.
        created_on = min(
            hired_on - timedelta(days=rng.randint(7, 30)), self.today - timedelta(days=1)
        )
        created_at = datetime.combine(created_on, time(9, rng.randint(0, 59)), tzinfo=UTC)
        updated_at = created_at + timedelta(minutes=rng.randint(1, 600))
        probation_ends_on = hired_on + PROBATION
        person = SeedPerson(
            id=person_id,
            first_name=first_name,
            middle_name=middle_name,
            last_name=last_name,
            email=email,
            personal_email=f"{local}.home@example.org" if rng.random() < 0.5 else None,
            gender=gender,
            date_of_birth=date(
                hired_on.year - rng.randint(22, 48), rng.randint(1, 12), rng.randint(1, 28)
            ),
            hired_on=hired_on,
            probation_ends_on=probation_ends_on,
            department=department,
            division=division,
            position=position,
            location=rng.choice(LOCATIONS),
            employment_type=rng.choice(EMPLOYMENT_TYPES) if job_level is None else "Full-Time",
            job_level=job_level or rng.choice(JOB_LEVELS),
            manager_id=manager_id,
            employee_number=f"E-{person_id:05d}",
            fields={
                "github": email_local_part(first_name, last_name).replace(".", "-")
                if department == "Engineering"
                else None,
                "laptop_preference": rng.choice(("MacBook Pro", "ThinkPad", "Dell XPS")),
                "tshirt_size": rng.choice(("S", "M", "L", "XL")),
            },
            created_at=created_at,
            updated_at=updated_at,
        )
        if hired_on <= self.today:
            self._issue_assets(person)
        self.people.append(person)
        return person

    def terminate(self, person: SeedPerson, effective_on: date) -> None:
        person.termination_effective_on = effective_on
        person.termination_type = self.rng.choice(("Voluntary", "Involuntary"))
        person.termination_reason = self.rng.choice(("New job", "Relocation", "Performance"))
        person.termination_comment = "Last day agreed with the manager."
        person.termination_eligible_for_rehire = person.termination_type == "Voluntary"
        # Long-gone leavers returned their equipment; recent ones still hold it.
        if effective_on < self.today - timedelta(days=30):
            for asset in person.assets:
                asset.returned_on = effective_on
        stamp = datetime.combine(
            min(effective_on, self.today) - timedelta(days=14), time(15, 0), tzinfo=UTC
        )
        person.updated_at = max(stamp, person.updated_at or stamp)

    def _issue_assets(self, person: SeedPerson) -> None:
        rng = self.rng
        kinds = [("Laptop", str(person.fields["laptop_preference"]))]
        if rng.random() < 0.7:
            kinds.append(("Badge", "Office access badge"))
        if rng.random() < 0.3:
            kinds.append(("Phone", rng.choice(("iPhone 15", "Pixel 8"))))
        for category, name in kinds:
            asset_id = self.next_asset_id
            self.next_asset_id += 1
            person.assets.append(
                SeedAsset(
                    id=asset_id,
                    category=category,
                    name=name,
                    code=f"{category[:3].upper()}-{asset_id}",
                    serial_number=f"SN{rng.randrange(16**8):08X}",
                    issued_on=person.hired_on,
                )
            )
