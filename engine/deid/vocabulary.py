"""The words kept in free text after de-identification: known imaging terms only.

A description such as "CT CHEST W CONTRAST SMITH 0042137" keeps "CT CHEST W CONTRAST": every token
that is not in this vocabulary (a name, a number, an unknown word, a typo) is removed, not guessed at.
Tokens are compared lower-case; the kept ones keep their original spelling.
"""

from __future__ import annotations

import re

__all__ = ["VOCABULARY", "keep_known_words"]

_TERMS = """
abdomen abdominal abd acetabulum achilles acromioclavicular adrenal airway ankle anterior aorta aortic appendix
arch arm arterial artery arthrogram atlas axilla axillary back bile biliary bladder bone bones bowel brain breast
breasts bronchus calcaneus calf cardiac carotid carpal cerebellum cerebral cervical chest clavicle coccyx colon
coronary cranial cranium cubital digit disc duodenum ear elbow esophagus eye face facial femur fetal fetus fibula
finger fingers foot forearm gallbladder hand head heart heel hip hips humerus ileum iliac inner internal jaw jejunum
joint kidney kidneys knee knees larynx leg limb liver lobe lower lumbar lung lungs mandible mastoid maxilla
mediastinum metacarpal metatarsal neck nasal nose orbit orbits ovary pancreas parotid patella pelvis pelvic
pharynx pituitary placenta popliteal prostate pulmonary radius rectum renal rib ribs sacrum sacroiliac scapula
scrotum shoulder sinus sinuses skull spine spinal spleen sternum stomach subclavian temporal testis thigh thoracic
thorax thumb thyroid tibia toe toes trachea ulna upper ureter urethra uterus vascular venous vertebra vertebral
wrist whole body extremity extremities soft tissue tissues skeletal skeleton neuro brainstem hippocampus
ventricle ventricles atrium valve mitral tricuspid circumference biparietal gestational
ap pa lat ll rl rld lld lao rao lpo rpo lateral frontal oblique axial coronal sagittal transverse decubitus
supine prone erect upright standing portable mobile bedside view views projection projections left right
bilateral unilateral both inferior superior medial distal proximal posterior dorsal ventral plantar palmar
cr dx ct mr mri us pt nm xa rf mg ot sc rt rg io px es ecg bmd dxa dexa pet spect xr xray radiograph
radiography radiographic ultrasound sonography echo echocardiogram doppler mammogram mammography tomosynthesis
fluoroscopy angiography angiogram venogram arteriogram myelogram urogram cholangiogram enema swallow scan scout
localizer localiser survey topogram
with without w wo contrast iv oral non noncontrast enhanced unenhanced pre post delayed portal phase
dynamic perfusion diffusion dwi adc swi flair stir tse fse gre spgr mprage bold dti cine tof mra mrv cta
ctv mrcp t1 t2 t2star pd fat sat fs water dixon inphase outphase opposed in out haste trufisp fiesta ssfp epi
bolus tracking calcium score low dose high resolution hr thin thick slice slices recon reconstruction mip mpr
vr volume 2d 3d 4d multiplanar kernel standard sharp smooth detail
protocol routine screening diagnostic followup follow up initial limited complete study series exam
examination procedure biopsy guided guidance drainage injection aspiration intervention interventional
trauma stroke emergency pediatric paediatric neonatal adult infant child pregnancy obstetric gynecologic
pneumonia nodule mass fracture effusion edema tumor tumour cancer staging
of and or the to for on at
ge siemens philips toshiba canon hitachi fujifilm fuji agfa carestream kodak konica minolta samsung medison
hologic esaote mindray shimadzu varian elekta aloka sonosite zonare acuson voluson logiq vivid
signa discovery optima revolution lightspeed brightspeed aquilion vantage somatom magnetom definition avanto
verio skyra prisma aera espree sensation emotion biograph ingenia achieva intera brilliance ingenuity iqon
epiq affiniti iu22 cx50 digital diagnost ddr fcr drx
medical systems healthcare imaging solutions
""".split()

VOCABULARY: frozenset[str] = frozenset(_TERMS)
_TOKEN = re.compile(r"[A-Za-z0-9+]+")


def keep_known_words(text: str, identifiers: frozenset[str] | set[str] = frozenset(), limit: int = 64) -> str:
    """`text` reduced to its vocabulary tokens (and none of `identifiers`), space-separated, at most
    `limit` characters (whole tokens only)."""
    kept: list[str] = []
    length = 0
    for token in _TOKEN.findall(text):
        word = token.lower()
        if word not in VOCABULARY or word in identifiers:
            continue
        if length + len(token) + bool(kept) > limit:
            break
        kept.append(token)
        length += len(token) + (len(kept) > 1)
    return " ".join(kept)
