"""A real PACS for the tests: Debian's Orthanc (+ its DICOMweb plugin) started on free ports with a temporary
configuration and storage, HTTP authentication on, as an unprivileged user when the tests run as root;
stopped (and its storage removed) at the end. `make test` installs Orthanc when missing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import requests

from engine.writers.wrap import encoded, radiograph_dicom

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "radlens", "pacs-test-password-1"
AE_TITLE = "TESTPACS"
DATA_DIR = Path(os.environ["RADLENS_DATA_DIR"]) if os.environ.get("RADLENS_DATA_DIR") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, radlens_ae: str, radlens_port: int):
        self.http_port, self.dicom_port = free_port(), free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="orthanc-"))
        self.folder.chmod(0o755)
        (self.folder / "db").mkdir()
        config = {
            "Name": "RadLensTestPACS", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": AE_TITLE, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD}, "Plugins": [str(DICOMWEB_PLUGIN)],
            # The DICOMweb plugin builds the URLs it returns from Host: without the port they are wrong.
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.http_port}", "Ssl": False},
            # C-GET / C-STORE need RadLens known as a modality.
            "DicomModalities": {"radlens": [radlens_ae, "127.0.0.1", radlens_port]},
            "DicomCheckCalledAet": True, "DicomCheckModalityHost": False, "DicomAlwaysAllowEcho": True,
            "StorageCompression": False, "ConcurrentJobs": 2, "HttpTimeout": 30, "DicomScuTimeout": 30,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        (self.folder / "orthanc.json").chmod(0o644)  # the store sets umask 077 in this process: Orthanc must read it
        if os.geteuid() == 0:
            shutil.chown(self.folder / "db", "nobody", "nogroup")
        self.log = open(self.folder / "log.txt", "wb")
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=self.log,
                                        stderr=subprocess.STDOUT, **({"user": "nobody", "group": "nogroup"}
                                                                     if os.geteuid() == 0 else {}))
        try:
            self._wait()
        except RuntimeError:
            self.stop()  # no temporary folder or process left behind by a PACS that did not start
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def _wait(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'log.txt').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not start in 30 s")

    def upload(self, data: bytes) -> dict:
        response = requests.post(f"{self.url}/instances", data=data, auth=(USER, PASSWORD), timeout=30)
        response.raise_for_status()
        return response.json()

    def rest(self, method: str, path: str, body=None, timeout: float = 120):
        response = requests.request(method, f"{self.url}{path}", json=body, auth=(USER, PASSWORD), timeout=timeout)
        response.raise_for_status()
        return response.json() if response.content else None

    def raw(self, path: str) -> bytes:
        response = requests.get(f"{self.url}{path}", auth=(USER, PASSWORD), timeout=120)
        response.raise_for_status()
        return response.content

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


# The studies the PACS tests and bench/pacs.py put into Orthanc.
MARKER = "ZZPACS4417"
STUDY_UID = "1.2.826.0.1.3680043.9.4417.1"
FILM = "person1597_bacteria_4190.jpeg"


def film_gray(side: int = 768) -> np.ndarray:
    gray = cv2.imread(str(DATA_DIR / "cxr_pneumonia_fullres" / FILM), cv2.IMREAD_GRAYSCALE)
    scale = side / max(gray.shape)
    return cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)), interpolation=cv2.INTER_AREA)


def chest_study(n: int = 1, study_uid: str = STUDY_UID) -> list[bytes]:
    """A pediatric chest CR study of n instances whose header is full of identifiers."""
    out = []
    for i in range(n):
        ds = radiograph_dicom(film_gray(), "CHEST PA", patient_id=f"{MARKER}-MRN", study_uid=study_uid,
                              PatientName=f"{MARKER}^Jane", AccessionNumber=f"{MARKER[:10]}A1",
                              StudyDate="20260315", InstitutionName=f"{MARKER} General", InstanceNumber=i + 1,
                              ReferringPhysicianName=f"{MARKER}^House")
        ds.SeriesInstanceUID = f"{study_uid}.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study_uid}.1.{i + 1}"
        out.append(encoded(ds))
    return out




def head_study() -> bytes:
    """A fetal-head ultrasound (the first HC18 test image, its pixel size in the ultrasound regions)."""
    import csv
    import io

    import pydicom

    from engine.writers.wrap import ultrasound_dicom

    with open(DATA_DIR / "hc18" / "manifest.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == "test")
    gray = cv2.imread(str(DATA_DIR / "hc18" / row["image"]), cv2.IMREAD_GRAYSCALE)
    ds = pydicom.dcmread(io.BytesIO(ultrasound_dicom(gray, float(row["pixel_size_mm"]), "FETAL HEAD",
                                                     patient_id=f"{MARKER}-US")))
    ds.StudyDate, ds.PatientName = "20260401", f"{MARKER}^Mary"
    return encoded(ds)
