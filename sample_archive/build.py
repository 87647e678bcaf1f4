"""Generate a small synthetic "library sound archive" for demos and tests.

The speech-corpus pipeline needs realistic input: a catalogue CSV next to audio in many
formats (wav, flac, mp3, ogg/opus, m4a, an mp4 video), mixed languages and voices, varying
rights statements, some transcripts inline and some in files, some missing, plus a corrupt and
an empty file. Real archive material cannot ship with the repository, so this module builds
such an archive from espeak-ng speech and plain sentences written for this purpose.

Output is deterministic for a given seed and espeak-ng version: every random choice (sentence
order, pauses, noise, corrupt bytes) comes from ``numpy.random.default_rng(seed)``, and files
carry no timestamps. Lossless files are byte-identical between runs; lossy ones are as close as
the encoders allow.

The build is idempotent and atomic: an archive whose ``.complete`` marker matches the seed and
``ARCHIVE_VERSION`` is left alone; otherwise the archive is built in a hidden temporary
directory next to OUT_DIR and renamed into place, so an interrupted run never leaves a
half-built OUT_DIR.

It lives outside the ``asr`` package (and its wheel): ``make sample`` runs it into
``build/sample-archive`` for the demo, and the tests call ``build_sample_archive`` from
``tests/conftest.py``. Usage, from the repository root::

    python -m sample_archive.build OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

log = logging.getLogger("sample_archive")  # not __main__ under python -m

#: Bump when the generated content changes, so existing archives are rebuilt.
ARCHIVE_VERSION = 1

CATALOGUE_NAME = "catalogue.csv"
MARKER_NAME = ".complete"
COLUMNS = (
    "id",
    "path",
    "title",
    "date",
    "collection",
    "language",
    "rights",
    "transcript",
    "text",
    "shelfmark",
)
ESPEAK_RATE = 22050  # espeak-ng always writes 22.05 kHz mono

# Plain sentences written for this archive (no third-party text). Avoid digits so that the
# transcript is exactly what is spoken.
SENTENCES: dict[str, tuple[str, ...]] = {
    "en": (
        "The city library opened its doors to the public on a cold morning in early spring.",
        "Its reading room has tall windows that face the river.",
        "For many years the library kept its newspapers in a cellar below the main hall.",
        "Visitors were asked to sign their names in a large book at the entrance.",
        "The oldest maps in the collection show the harbour before the new docks were built.",
        "A small team of volunteers helped to sort the letters and photographs.",
        "The river runs slowly through the valley and turns west near the old mill.",
        "In winter the water sometimes freezes along the banks.",
        "Fishing boats used to tie up beside the market square every Friday.",
        "The harbour master kept a record of every ship that entered the port.",
        "Most of the cargo was timber, grain and salt.",
        "When the fog came in, the bell on the pier was rung every few minutes.",
        "The ferry crossed the bay twice a day in summer and once a day in winter.",
        "Children often waited on the quay to watch the boats come home.",
        "The lecture hall on the second floor could seat about two hundred people.",
        "Public talks were held there on the first Tuesday of every month.",
        "The archive stores sound recordings, films and printed programmes.",
        "Each recording is given a shelf mark and a short description.",
        "Some of the tapes were damaged by damp and had to be copied carefully.",
        "The catalogue lists the title, the date and the language of every item.",
        "A new bridge was finished after three years of work.",
        "Before the bridge was built, carts had to wait for the ferry.",
        "The old warehouse by the canal now holds the city museum.",
        "Its walls are made of red brick and its roof is covered with slate.",
        "In the evenings the reading room was lit by green lamps.",
        "Students came to copy passages from rare books by hand.",
        "The librarian knew where almost every book was kept.",
        "A fire in the east wing destroyed part of the music collection.",
        "Most of the lost scores were later replaced by gifts from other libraries.",
        "The tide rises and falls twice each day in the harbour.",
        "At low tide the mud flats are full of birds.",
        "Local farmers brought apples and cheese to the market by boat.",
        "The lighthouse at the end of the pier was painted white and red.",
        "Its keeper lived in a small house at the foot of the tower.",
        "Weather reports were read on the radio every morning at seven.",
        "Listeners wrote letters to the station asking for their favourite songs.",
        "The radio studio was a quiet room with heavy curtains on every wall.",
        "Many of the early broadcasts were never recorded at all.",
        "Those that survive give us a rare view of everyday life in the town.",
        "The archive is open to researchers on weekdays from nine until five.",
    ),
    "de": (
        "Die Stadtbibliothek wurde im Frühjahr für die Öffentlichkeit eröffnet.",
        "Der Lesesaal hat hohe Fenster mit Blick auf den Fluss.",
        "Viele Jahre lang lagen die alten Zeitungen im Keller unter der großen Halle.",
        "Am Eingang trugen sich die Besucher in ein dickes Buch ein.",
        "Die ältesten Karten zeigen den Hafen, bevor die neuen Kais gebaut wurden.",
        "Eine kleine Gruppe von Freiwilligen half beim Ordnen der Briefe und Fotografien.",
        "Der Fluss fließt langsam durch das Tal und biegt bei der alten Mühle nach Westen ab.",
        "Im Winter friert das Wasser am Ufer manchmal zu.",
        "Jeden Freitag legten die Fischerboote neben dem Marktplatz an.",
        "Der Hafenmeister schrieb jedes Schiff auf, das in den Hafen einlief.",
        "Die meisten Schiffe brachten Holz, Getreide und Salz.",
        "Bei Nebel läutete man die Glocke am Steg alle paar Minuten.",
        "Im Sommer fuhr die Fähre zweimal am Tag über die Bucht.",
        "Die Kinder warteten oft am Kai, um die Boote heimkehren zu sehen.",
        "Der Vortragssaal im ersten Stock bot Platz für etwa zweihundert Menschen.",
        "Dort fanden jeden Monat öffentliche Vorträge statt.",
        "Das Archiv bewahrt Tonaufnahmen, Filme und gedruckte Programme auf.",
        "Jede Aufnahme erhält eine Signatur und eine kurze Beschreibung.",
        "Einige Bänder waren feucht geworden und mussten vorsichtig kopiert werden.",
        "Der Katalog nennt Titel, Datum und Sprache jedes Stückes.",
        "Nach drei Jahren Bauzeit wurde die neue Brücke fertig.",
        "Vor dem Bau der Brücke mussten die Wagen auf die Fähre warten.",
        "Im alten Lagerhaus am Kanal befindet sich heute das Stadtmuseum.",
        "Seine Mauern bestehen aus rotem Backstein.",
        "Am Abend wurde der Lesesaal von grünen Lampen erhellt.",
        "Studenten kamen, um Abschnitte aus seltenen Büchern abzuschreiben.",
        "Die Bibliothekarin wusste, wo fast jedes Buch stand.",
        "Ein Brand im Ostflügel zerstörte einen Teil der Musiksammlung.",
        "Die meisten verlorenen Noten wurden später durch Geschenke ersetzt.",
        "Im Hafen steigt und fällt das Wasser zweimal am Tag.",
        "Bei Ebbe ist das Watt voller Vögel.",
        "Die Bauern brachten Äpfel und Käse mit dem Boot zum Markt.",
        "Der Leuchtturm am Ende der Mole war weiß und rot gestrichen.",
        "Der Wärter wohnte in einem kleinen Haus am Fuß des Turms.",
        "Der Wetterbericht wurde jeden Morgen um sieben Uhr im Radio verlesen.",
        "Die Hörer schrieben Briefe an den Sender und wünschten sich Lieder.",
        "Das Studio war ein stiller Raum mit schweren Vorhängen an allen Wänden.",
        "Viele der frühen Sendungen wurden nie aufgezeichnet.",
        "Die erhaltenen Aufnahmen zeigen das Alltagsleben in der Stadt.",
        "Das Archiv ist werktags von neun bis fünf Uhr für die Forschung geöffnet.",
    ),
    "es": (
        "La biblioteca municipal abrió sus puertas al público una mañana de primavera.",
        "La sala de lectura tiene ventanas altas que dan al río.",
        "Durante muchos años los periódicos se guardaron en un sótano bajo la sala principal.",
        "Los visitantes firmaban con su nombre en un gran libro a la entrada.",
        "Los mapas más antiguos muestran el puerto antes de la construcción de los muelles.",
        "Un pequeño grupo de voluntarios ayudó a ordenar las cartas y las fotografías.",
        "El río pasa despacio por el valle y gira hacia el oeste junto al viejo molino.",
        "En invierno el agua a veces se congela en las orillas.",
        "Los barcos de pesca amarraban junto a la plaza del mercado todos los viernes.",
        "El capitán del puerto anotaba cada barco que entraba en la bahía.",
        "La mayor parte de la carga era madera, trigo y sal.",
        "Cuando llegaba la niebla, tocaban la campana del muelle cada pocos minutos.",
        "En verano el transbordador cruzaba la bahía dos veces al día.",
        "Los niños esperaban en el muelle para ver volver los barcos.",
        "El salón de actos del primer piso tenía lugar para unas doscientas personas.",
        "Allí se daban conferencias públicas el primer martes de cada mes.",
        "El archivo conserva grabaciones de sonido, películas y programas impresos.",
        "Cada grabación recibe una signatura y una breve descripción.",
        "Algunas cintas se dañaron por la humedad y hubo que copiarlas con cuidado.",
        "El catálogo indica el título, la fecha y el idioma de cada documento.",
        "El nuevo puente se terminó después de tres años de obras.",
        "Antes del puente, los carros tenían que esperar al transbordador.",
        "El viejo almacén junto al canal alberga hoy el museo de la ciudad.",
        "Sus muros son de ladrillo rojo y su tejado es de pizarra.",
        "Por la tarde la sala de lectura se iluminaba con lámparas verdes.",
        "Los estudiantes venían a copiar a mano pasajes de libros raros.",
        "La bibliotecaria sabía dónde estaba casi cada libro.",
        "Un incendio en el ala este destruyó parte de la colección de música.",
        "Otras bibliotecas donaron después muchas de las partituras perdidas.",
        "En el puerto la marea sube y baja dos veces al día.",
        "Con la marea baja, las marismas se llenan de aves.",
        "Los campesinos traían manzanas y queso al mercado en barca.",
        "El faro al final del muelle estaba pintado de blanco y rojo.",
        "El farero vivía en una casa pequeña al pie de la torre.",
        "El parte meteorológico se leía en la radio cada mañana a las siete.",
        "Los oyentes escribían cartas a la emisora para pedir sus canciones favoritas.",
        "El estudio de radio era una sala tranquila con cortinas gruesas.",
        "Muchas de las primeras emisiones nunca se grabaron.",
        "Las que se conservan muestran la vida diaria de la ciudad.",
        "El archivo está abierto a los investigadores de lunes a viernes.",
    ),
    "sv": (
        "Stadsbiblioteket öppnades för allmänheten en kall vårmorgon.",
        "Läsesalen har höga fönster mot älven.",
        "De gamla tidningarna förvarades länge i en källare under stora salen.",
        "Besökarna skrev sina namn i en stor bok vid ingången.",
        "De äldsta kartorna visar hamnen innan de nya kajerna byggdes.",
        "Älven rinner långsamt genom dalen och svänger västerut vid den gamla kvarnen.",
        "På vintern fryser vattnet ibland längs stränderna.",
        "Fiskebåtarna lade till vid torget varje fredag.",
        "Hamnkaptenen skrev upp varje fartyg som kom in i hamnen.",
        "Det mesta av lasten var timmer, spannmål och salt.",
        "När dimman kom ringde man i klockan på piren.",
        "Färjan gick över viken två gånger om dagen på sommaren.",
        "Barnen väntade ofta på kajen för att se båtarna komma hem.",
        "Arkivet förvarar ljudinspelningar, filmer och tryckta program.",
        "Varje inspelning får ett signum och en kort beskrivning.",
        "Några av banden hade skadats av fukt.",
        "Den nya bron blev färdig efter tre års arbete.",
        "Det gamla magasinet vid kanalen är i dag stadens museum.",
        "På kvällarna lystes läsesalen upp av gröna lampor.",
        "Fyren längst ut på piren var målad i vitt och rött.",
        "Fyrvaktaren bodde i ett litet hus vid tornets fot.",
        "Väderleksrapporten lästes i radio varje morgon klockan sju.",
        "Lyssnarna skrev brev till radiostationen och önskade sånger.",
        "Många av de tidiga sändningarna spelades aldrig in.",
        "Arkivet är öppet för forskare på vardagar.",
    ),
}


@dataclass(frozen=True)
class Item:
    """One catalogue entry and how to synthesise and encode it."""

    path: str  # relative to the catalogue
    fmt: str  # wav | flac | mp3 | opus | m4a | mp4 | corrupt | empty
    language: str
    title: str
    date: str
    rights: str
    voice: str = ""
    speed: int = 160
    pitch: int = 50
    rate: int = 16000
    channels: int = 1
    target_s: float = 0.0  # upper bound on duration; sentences are added while they fit
    transcript: str = "none"  # inline | file | none
    peak: float = 0.7
    noise: float = 0.0  # amplitude of a faint hiss (old tape)

    @property
    def collection(self) -> str:
        return self.path.split("/", 1)[0]


# fmt: off
ITEMS: tuple[Item, ...] = (
    Item("oral_history/harbour_master_1957.wav", "wav", "en", "Interview with a harbour master",
         "1957-05-04", "public domain", "en+m3", 150, 40, 16000, target_s=11,
         transcript="inline", noise=0.0008),
    Item("oral_history/ferry_memories.flac", "flac", "en", "Memories of the ferry",
         "1961-08-19", "CC0-1.0", "en+f3", 165, 60, 22050, target_s=14, transcript="file",
         noise=0.0005),
    Item("oral_history/fischmarkt.wav", "wav", "de", "Erinnerungen an den Fischmarkt",
         "1959", "CC BY 4.0", "de+f2", 155, 55, 16000, target_s=13, transcript="inline",
         noise=0.0008),
    Item("oral_history/entrevista_puerto.opus", "opus", "es", "Entrevista en el puerto",
         "1964-03-12", "CC-BY-SA-4.0", "es+f3", 160, 65, 48000, target_s=26,
         transcript="file"),
    Item("oral_history/hamnen_berattelse.flac", "flac", "sv", "Berättelse om hamnen",
         "1958", "public domain", "sv+m3", 150, 45, 24000, target_s=20, noise=0.0005),
    Item("oral_history/mill_workers.m4a", "m4a", "en", "Mill workers remember",
         "1972-11-02", "In copyright", "en-us+m1", 170, 35, 24000, target_s=55),
    Item("oral_history/stadtarchiv_gespraech.mp3", "mp3", "de", "Gespräch im Stadtarchiv",
         "1966", "CC BY-NC 4.0", "de+m3", 160, 40, 22050, target_s=45),
    Item("radio/news_bulletin_river.mp3", "mp3", "en", "News bulletin: the river in flood",
         "1962-04-30", "CC BY 4.0", "en+m1", 180, 50, 24000, target_s=9,
         transcript="inline"),
    Item("radio/wetterbericht.ogg", "opus", "de", "Wetterbericht", "1963-01-15", "CC0-1.0",
         "de", 175, 50, 48000, target_s=14, transcript="file"),
    Item("radio/cronica_del_rio.mp3", "mp3", "es", "Crónica del río", "1960", "",
         "es+m2", 170, 45, 22050, target_s=40),
    Item("radio/morning_programme.m4a", "m4a", "en", "Morning programme", "1955-09-09",
         "public domain", "en+f2", 165, 70, 22050, target_s=28, transcript="file"),
    Item("radio/noticias_breves.ogg", "opus", "es", "Noticias breves", "1968-06-21",
         "CC BY 4.0", "es", 185, 55, 48000, target_s=8, transcript="inline", peak=0.35),
    Item("radio/radioteatern.wav", "wav", "sv", "Radioteatern: kvällen vid hamnen", "1970",
         "In copyright", "sv+f2", 160, 60, 22050, target_s=90),
    Item("radio/harbour_report_1965.mp4", "mp4", "en", "Harbour report (newsreel)",
         "1965-07-07", "CC BY-NC 4.0", "en+m2", 160, 45, 24000, target_s=10),
    Item("lectures/history_of_the_library.flac", "flac", "en", "A history of the city library",
         "1957", "public domain", "en+m3", 150, 40, 44100, channels=2, target_s=170,
         transcript="file"),
    Item("lectures/bibliotheksgeschichte.m4a", "m4a", "de", "Vortrag: Geschichte der Bibliothek",
         "1961-10-23", "CC BY 4.0", "de+m3", 150, 45, 24000, target_s=150, transcript="file"),
    Item("lectures/el_puerto_y_la_ciudad.mp3", "mp3", "es", "El puerto y la ciudad", "1963",
         "", "es+f3", 155, 55, 16000, target_s=120),
    Item("lectures/river_ecology_intro.opus", "opus", "en", "Introduction to river ecology",
         "1969-02-14", "CC-BY-SA-4.0", "en+f4", 160, 60, 48000, target_s=35),
    Item("lectures/cartografia.wav", "wav", "es", "Lección de cartografía", "1971",
         "In copyright", "es+m3", 165, 45, 24000, target_s=12, transcript="inline"),
    Item("lectures/reading_room_rules.flac", "flac", "en", "Reading room announcement",
         "1974-05-04", "CC BY 4.0", "en-us+f3", 170, 65, 16000, target_s=9),
    Item("radio/broken.mp3", "corrupt", "en", "Evening news (damaged transfer)", "1961",
         "public domain"),
    Item("lectures/empty.wav", "empty", "de", "Vortrag (leere Datei)", "1960-02-02",
         "CC BY 4.0"),
)
# fmt: on

PYAV_FORMATS = {
    # fmt: (container format, audio codec, audio bit rate)
    "mp3": ("mp3", "libmp3lame", 48_000),
    "opus": ("ogg", "libopus", 32_000),
    "m4a": ("mp4", "aac", 48_000),
    "mp4": ("mp4", "aac", 48_000),
}
BITEXACT_CONTAINER = {"fflags": "+bitexact"}  # no encoder version strings, fixed ogg serials
BITEXACT_CODEC = {"flags": "+bitexact"}


class Speaker:
    """Synthesises single sentences with espeak-ng, caching the results."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise RuntimeError("espeak-ng is needed to build the sample archive; install it")
        self.exe = exe
        self.wav = workdir / "sentence.wav"
        self.cache: dict[tuple[str, int, int, str], np.ndarray] = {}

    def say(self, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        """Mono float32 speech at ESPEAK_RATE with leading/trailing silence trimmed."""
        key = (voice, speed, pitch, text)
        if key not in self.cache:
            cmd = [self.exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(self.wav)]
            subprocess.run([*cmd, text], check=True, capture_output=True)
            audio, rate = sf.read(self.wav, dtype="float32", always_2d=True)
            if rate != ESPEAK_RATE:
                raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE}")
            self.cache[key] = _trim(audio[:, 0])
        return self.cache[key]


def _trim(x: np.ndarray, threshold: float = 1e-3, margin_s: float = 0.02) -> np.ndarray:
    """Cut near-silence from both ends, keeping a short margin."""
    loud = np.flatnonzero(np.abs(x) > threshold)
    if loud.size == 0:
        return x
    margin = int(margin_s * ESPEAK_RATE)
    return x[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * ESPEAK_RATE)), dtype=np.float32)


def _compose(
    item: Item, speaker: Speaker, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """Speech for one item at ESPEAK_RATE, and the sentences spoken in order.

    Sentences come from the item's language pool in a seeded order, cycling if needed; each
    is added only if it still fits within ``item.target_s`` (at least one always is).
    """
    pool = SENTENCES[item.language]
    lead, trail = rng.uniform(0.5, 1.0, size=2)
    budget = item.target_s - lead - trail
    order = rng.permutation(len(pool))
    parts: list[np.ndarray] = [_silence(lead)]
    spoken: list[str] = []
    used = 0.0
    misses = 0
    position = 0
    while misses < len(pool) and position < 20 * len(pool):
        text = pool[order[position % len(pool)]]
        position += 1
        speech = speaker.say(text, item.voice, item.speed, item.pitch)
        gap = float(rng.uniform(0.3, 1.5)) if spoken else 0.0
        needed = gap + speech.size / ESPEAK_RATE
        if spoken and used + needed > budget:
            misses += 1
            continue
        misses = 0
        if gap:
            parts.append(_silence(gap))
        parts.append(speech)
        spoken.append(text)
        used += needed
    parts.append(_silence(trail))
    audio = np.concatenate(parts)
    audio *= item.peak / max(float(np.max(np.abs(audio))), 1e-9)
    if item.noise:
        audio += (item.noise * rng.standard_normal(audio.size)).astype(np.float32)
    return audio.astype(np.float32), spoken


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono float32 audio from ESPEAK_RATE to ``rate`` with libswresample."""
    if rate == ESPEAK_RATE:
        return x
    frame = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
    frame.sample_rate = ESPEAK_RATE
    frame.pts = 0
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    out = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray()[0] for f in out]).astype(np.float32)


def _to_channels(x: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """(channels, samples); the second channel is delayed 3 ms and scaled by 0.8."""
    if channels == 1:
        return x[None, :]
    delay = int(0.003 * rate)
    right = np.concatenate([np.zeros(delay, np.float32), x[:-delay]]) * np.float32(0.8)
    return np.stack([x, right])


def _write_pyav(path: Path, audio: np.ndarray, rate: int, fmt: str) -> None:
    """Encode (channels, samples) float32 audio with PyAV; ``mp4`` adds a solid-colour video."""
    container_format, codec, bit_rate = PYAV_FORMATS[fmt]
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    with av.open(
        str(path), "w", format=container_format, container_options=BITEXACT_CONTAINER
    ) as out:
        video = None
        if fmt == "mp4":
            fps = 5
            video = out.add_stream("mpeg4", rate=fps, options=dict(BITEXACT_CODEC))
            video.width = video.height = 64
            video.pix_fmt = "yuv420p"
            video.bit_rate = 50_000
            video.codec_context.time_base = Fraction(1, fps)
        stream = out.add_stream(codec, rate=rate, layout=layout, options=dict(BITEXACT_CODEC))
        stream.bit_rate = bit_rate

        if video is not None:
            colour = np.zeros((64, 64, 3), dtype=np.uint8)
            colour[:] = (24, 64, 120)  # a dark blue test card
            n_frames = int(np.ceil(audio.shape[1] / rate * fps))
            for i in range(n_frames):
                frame = av.VideoFrame.from_ndarray(colour, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                out.mux(video.encode(frame.reformat(format="yuv420p")))
            out.mux(video.encode(None))

        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), "fltp", layout)
        frame.sample_rate = rate
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _write_audio(path: Path, audio: np.ndarray, rate: int, fmt: str) -> None:
    """Write (channels, samples) audio in the item's format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("wav", "flac"):
        sf.write(path, np.clip(audio.T, -1, 1), rate, subtype="PCM_16", format=fmt.upper())
    else:
        _write_pyav(path, audio, rate, fmt)


def _shelfmark(item: Item, number: int) -> str:
    return f"SA-{item.date[:4]}-{number:03d}"


def _build(root: Path, seed: int) -> Path:
    """Write the whole archive into ``root`` (an empty directory)."""
    rng = np.random.default_rng(seed)
    item_rngs = rng.spawn(len(ITEMS))
    rows = []
    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
        speaker = Speaker(Path(tmp))
        for number, (item, item_rng) in enumerate(zip(ITEMS, item_rngs, strict=True), start=1):
            path = root / item.path
            path.parent.mkdir(parents=True, exist_ok=True)
            transcript, text = "", ""
            if item.fmt == "corrupt":
                path.write_bytes(item_rng.bytes(20 * 1024))
            elif item.fmt == "empty":
                path.write_bytes(b"")
            else:
                speech, spoken = _compose(item, speaker, item_rng)
                audio = _to_channels(_resample(speech, item.rate), item.rate, item.channels)
                _write_audio(path, audio, item.rate, item.fmt)
                log.debug(
                    "%s: %.1f s, %d sentences", item.path, speech.size / ESPEAK_RATE, len(spoken)
                )
                if item.transcript == "inline":
                    text = " ".join(spoken)
                elif item.transcript == "file":
                    txt = path.with_suffix(".txt")
                    txt.write_text("".join(s + "\n" for s in spoken), encoding="utf-8")
                    transcript = txt.relative_to(root).as_posix()
            rows.append(
                {
                    "id": f"sa-{number:04d}",
                    "path": item.path,
                    "title": item.title,
                    "date": item.date,
                    "collection": item.collection,
                    "language": item.language,
                    "rights": item.rights,
                    "transcript": transcript,
                    "text": text,
                    "shelfmark": _shelfmark(item, number),
                }
            )
    catalogue = root / CATALOGUE_NAME
    with catalogue.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (root / "README.md").write_text(_readme(seed), encoding="utf-8")
    (root / MARKER_NAME).write_text(_marker(seed), encoding="utf-8")
    return catalogue


def _readme(seed: int) -> str:
    return (
        "# Sample sound archive (synthetic)\n\n"
        "A small, made-up library sound archive for demos and tests of the speech-corpus "
        "pipeline: espeak-ng speech in English, German, Spanish and Swedish, in wav, flac, mp3, "
        "ogg/opus, m4a and mp4 (with video), described by `catalogue.csv`. Some items have "
        "transcripts (inline in the `text` column or as `.txt` files, one sentence per line), "
        "rights vary, and `radio/broken.mp3` (corrupt) and `lectures/empty.wav` (empty) are "
        "deliberately unusable.\n\n"
        "All text was written for this archive; nothing here is real archive material.\n\n"
        f"Generated by `sample_archive/build.py` (version {ARCHIVE_VERSION}, seed {seed}). "
        "Do not edit by hand; regenerate with:\n\n"
        f"    python -m sample_archive.build OUT_DIR --seed {seed}\n"
    )


def _marker(seed: int) -> str:
    return json.dumps({"seed": seed, "version": ARCHIVE_VERSION}, sort_keys=True) + "\n"


def _is_complete(out_dir: Path, seed: int) -> bool:
    marker = out_dir / MARKER_NAME
    if not (out_dir / CATALOGUE_NAME).is_file() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == json.loads(_marker(seed))
    except (OSError, ValueError):
        return False


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything that is not an (old or partial) sample archive."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    ours = (out_dir / MARKER_NAME).exists() or (out_dir / CATALOGUE_NAME).exists()
    if not ours and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty and is not a sample archive; not replacing")


def _remove_stale_work_dirs(out_dir: Path, max_age_s: float = 3600) -> None:
    """Delete work directories that killed runs left next to ``out_dir`` (older than an hour)."""
    for work in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        try:
            stale = time.time() - work.stat().st_mtime > max_age_s
            if stale and work.is_dir() and {p.name for p in work.iterdir()} <= {"archive", "old"}:
                log.info("removing %s left by an interrupted run", work)
                shutil.rmtree(work, ignore_errors=True)
        except OSError:
            continue


def build_sample_archive(out_dir: Path, seed: int = 0) -> Path:
    """Build (or reuse) the sample archive in ``out_dir``; return the catalogue CSV path."""
    out_dir = Path(out_dir)
    catalogue = out_dir / CATALOGUE_NAME
    if _is_complete(out_dir, seed):
        log.info("%s is up to date (seed %d, version %d)", out_dir, seed, ARCHIVE_VERSION)
        return catalogue
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(out_dir)
    started = time.monotonic()
    # A hidden work directory next to OUT_DIR (same file system, so renames are atomic). The
    # archive is built in work/archive (created with the umask's permissions, unlike mkdtemp's
    # 0700) and only then renamed to OUT_DIR; an old archive is moved aside into work/old.
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        staging = work / "archive"
        staging.mkdir()
        _build(staging, seed)
        _check_replaceable(out_dir)
        if out_dir.exists():
            out_dir.rename(work / "old")
        staging.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("built %s in %.1f s", out_dir, time.monotonic() - started)
    return catalogue


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m sample_archive.build",
        description=(
            "Generate a small synthetic library sound archive (espeak-ng speech in several "
            "languages and formats, a catalogue.csv with rights and transcripts, plus a corrupt "
            "and an empty file) for demos and tests. Needs espeak-ng on PATH. Does nothing if "
            "OUT_DIR already holds a complete archive for the same seed and version."
        ),
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="directory to create")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for sentence order, pauses, noise and corrupt bytes (default: 0)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log every file written (default: summary only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    catalogue = build_sample_archive(args.out_dir, seed=args.seed)
    log.info("catalogue: %s", catalogue)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
