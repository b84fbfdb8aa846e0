"""Build a territorial partnership: keys for every partner, NATS user keys, a signed directory.

Used by ``relais demo``, the tests and the benchmarks; an operator enrolling real partners
uses ``relais keys new`` and ``relais directory add/sign`` instead (each partner generates
its own keys and hands over only the public part).

The demo territory is Seine-Saint-Denis (93): one partner of every kind, plus the ASE of
Paris (75) as the guardian département of a child in care placed in 93.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from relais.agents.keys import (
    MEMLIMIT_DEFAULT,
    OPSLIMIT_DEFAULT,
    ROOT_PARTNER_ID,
    PartnerKeys,
    nats_user_public,
    nats_user_seed,
    write_atomic,
    write_key_file,
)
from relais.broker_config.directory import (
    Directory,
    DirectoryKeys,
    Partner,
    new_partner_key,
    sign_directory,
    utc_now,
)
from relais.schemas.domain import PartnerKind

__all__ = [
    "DEMO_PARTNERS",
    "GATEWAY_ID",
    "PartnerSpec",
    "Territory",
    "build_territory",
    "nats_user_seed",
]

RandomSource = Callable[[int], bytes]

GATEWAY_ID = "gateway"


@dataclass(frozen=True, slots=True)
class PartnerSpec:
    """One partner to create."""

    id: str
    kind: PartnerKind
    name: str
    departements: tuple[str, ...] = ()


DEMO_PARTNERS: tuple[PartnerSpec, ...] = (
    PartnerSpec(
        "gend-93-bobigny", PartnerKind.GENDARMERIE, "Brigade de gendarmerie de Bobigny", ("93",)
    ),
    PartnerSpec(
        "police-93-saint-denis", PartnerKind.POLICE, "Commissariat de Saint-Denis", ("93",)
    ),
    PartnerSpec(
        "cyber-ofmin", PartnerKind.POLICE_CYBER, "Office mineurs, unité cyber", ("93", "75")
    ),
    PartnerSpec("crip-93", PartnerKind.CRIP, "CRIP de la Seine-Saint-Denis", ("93",)),
    PartnerSpec("ase-93", PartnerKind.ASE, "Aide sociale à l'enfance 93", ("93",)),
    PartnerSpec("ase-75", PartnerKind.ASE, "Aide sociale à l'enfance de Paris", ("75",)),
    PartnerSpec(
        "parquet-93-bobigny", PartnerKind.PARQUET, "Parquet de Bobigny, magistrat référent", ("93",)
    ),
    PartnerSpec("uaped-93-jean-verdier", PartnerKind.UAPED, "UAPED hôpital Jean-Verdier", ("93",)),
    PartnerSpec("hopital-93-avicenne", PartnerKind.HOSPITAL, "Hôpital Avicenne, urgences", ("93",)),
    PartnerSpec(
        "medref-93",
        PartnerKind.MEDECIN_REFERENT,
        "Médecin référent protection de l'enfance 93",
        ("93",),
    ),
    PartnerSpec(
        "college-93-jaures", PartnerKind.SCHOOL, "Collège Jean-Jaurès, service social", ("93",)
    ),
    PartnerSpec("hotel-93-gare", PartnerKind.HOTEL, "Hôtel de la Gare, Saint-Denis", ("93",)),
    PartnerSpec(
        "location-courte", PartnerKind.RENTAL_PLATFORM, "Plateforme de location courte durée"
    ),
    PartnerSpec(
        "reseau-social", PartnerKind.SOCIAL_NETWORK, "Réseau social, équipe de signalement"
    ),
    PartnerSpec(
        "assoc-93-agir", PartnerKind.ASSOCIATION, "Association spécialisée Agir 93", ("93",)
    ),
    PartnerSpec(
        "maraude-93", PartnerKind.OUTREACH, "Prévention spécialisée, maraude de nuit", ("93",)
    ),
    PartnerSpec("pjj-93", PartnerKind.PJJ, "PJJ, direction territoriale 93", ("93",)),
    PartnerSpec(
        "foyer-93-horizon", PartnerKind.CARE_SERVICE, "Foyer Horizon, accueil d'urgence", ("93",)
    ),
    PartnerSpec(
        "coord-93", PartnerKind.COORDINATION, "Cellule de coordination départementale", ("93",)
    ),
    PartnerSpec(GATEWAY_ID, PartnerKind.GATEWAY, "Passerelle du partenariat"),
)


@dataclass
class Territory:
    """A partnership with every private key at hand (demo, tests, benchmarks only)."""

    partnership: str
    root: PartnerKeys
    identities: dict[str, PartnerKeys]
    nats_seeds: dict[str, bytes]
    directory: Directory
    signed_directory: bytes
    specs: dict[str, PartnerSpec] = field(default_factory=dict)

    @property
    def root_public_key(self) -> bytes:
        """The pinned root public key."""
        return self.root.sign_pk

    @property
    def root_public_b64(self) -> str:
        """The pinned root public key, base64."""
        return base64.b64encode(self.root.sign_pk).decode("ascii")

    def keys(self) -> DirectoryKeys:
        """Key resolution over this territory's directory."""
        return DirectoryKeys(self.directory)

    def write(
        self,
        root: Path,
        *,
        passphrase: bytes,
        opslimit: int | None = None,
        memlimit: int | None = None,
    ) -> None:
        """Write ``directory.json``, ``root.pub``, ``keys/<id>.key`` and ``creds/<id>.nk``."""
        (root / "keys").mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "creds").mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(root / "directory.json", self.signed_directory, mode=0o644, overwrite=True)
        write_atomic(
            root / "root.pub", self.root_public_b64.encode() + b"\n", mode=0o644, overwrite=True
        )
        ops = OPSLIMIT_DEFAULT if opslimit is None else opslimit
        mem = MEMLIMIT_DEFAULT if memlimit is None else memlimit
        for pid, keys in self.identities.items():
            path = root / "keys" / f"{pid}.key"
            write_key_file(path, keys, passphrase, overwrite=True, opslimit=ops, memlimit=mem)
        for pid, seed in self.nats_seeds.items():
            write_atomic(root / "creds" / f"{pid}.nk", seed + b"\n", mode=0o600, overwrite=True)


def build_territory(
    specs: Iterable[PartnerSpec] = DEMO_PARTNERS,
    *,
    partnership: str = "partenariat-93",
    random: RandomSource = os.urandom,
    now: datetime | None = None,
    valid_for: timedelta = timedelta(days=365),
) -> Territory:
    """Generate keys for every partner and a directory signed by a fresh root key."""
    issued = now or utc_now()
    root = PartnerKeys.generate(ROOT_PARTNER_ID, random=random)
    identities: dict[str, PartnerKeys] = {}
    seeds: dict[str, bytes] = {}
    partners: list[Partner] = []
    spec_map: dict[str, PartnerSpec] = {}
    for spec in specs:
        keys = PartnerKeys.generate(spec.id, random=random)
        identities[spec.id] = keys
        nkey = None
        if spec.kind is not PartnerKind.GATEWAY:  # the gateway connects as its service user
            seed = nats_user_seed(random)
            seeds[spec.id] = seed
            nkey = nats_user_public(seed)
        spec_map[spec.id] = spec
        key = new_partner_key(
            keys.sign_pk,
            keys.box_pk,
            not_before=issued - timedelta(days=1),
            not_after=issued + valid_for,
        )
        partners.append(
            Partner(
                id=spec.id,
                kind=spec.kind,
                name=spec.name,
                departements=spec.departements,
                keys=(key,),
                nats_nkey=nkey,
            )
        )
    directory = Directory(
        partnership=partnership,
        serial=1,
        issued_at=issued,
        root_key_id=root.key_id,
        partners=tuple(sorted(partners, key=lambda p: p.id)),
    )
    return Territory(
        partnership=partnership,
        root=root,
        identities=identities,
        nats_seeds=seeds,
        directory=directory,
        signed_directory=sign_directory(directory, root),
        specs=spec_map,
    )
