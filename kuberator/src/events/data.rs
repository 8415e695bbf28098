//! What an event says: its type, reason, action and note, bounded to what the API server accepts.

use std::{borrow::Cow, fmt};

use k8s_openapi::api::core::v1::ObjectReference;

/// The API server rejects notes longer than this many bytes.
pub(crate) const NOTE_MAX_BYTES: usize = 1024;
/// The API server rejects reasons and actions longer than this many bytes.
pub(crate) const REASON_MAX_BYTES: usize = 128;
/// Appended to a truncated note.
const ELLIPSIS: &str = "...";

/// The severity of an event: `Normal` or `Warning` (the only two the API server accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something happened as expected, e.g. a deployment was created.
    Normal,
    /// Something is not working as expected and may need a look.
    Warning,
}

impl EventType {
    /// The value of the Event's `type` field: `"Normal"` or `"Warning"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A short, CamelCase, bounded-cardinality identifier: an event's `reason` (why, e.g.
/// `ScalingReplicaSet`) or `action` (what was done, e.g. `Scale`).
///
/// Implemented for `&'static str`, `String` and `Cow<'static, str>`; implement it for an enum of
/// your reasons so that typos become compile errors:
///
/// ```
/// use std::borrow::Cow;
/// use kuberator::events::{EventData, Reason};
///
/// enum WebsiteReason { Created, ImageMissing }
///
/// impl Reason for WebsiteReason {
///     fn as_str(&self) -> &str {
///         match self {
///             WebsiteReason::Created => "Created",
///             WebsiteReason::ImageMissing => "ImageMissing",
///         }
///     }
///     // Optional: avoids one small allocation per event.
///     fn into_cow(self) -> Cow<'static, str> {
///         Cow::Borrowed(match self {
///             WebsiteReason::Created => "Created",
///             WebsiteReason::ImageMissing => "ImageMissing",
///         })
///     }
/// }
///
/// let data = EventData::warning(WebsiteReason::ImageMissing, "Reconcile");
/// assert_eq!(data.reason, "ImageMissing");
/// ```
pub trait Reason {
    /// The identifier, e.g. `ImageMissing`. At most 128 bytes are kept.
    fn as_str(&self) -> &str;

    /// The identifier as an owned or static string. The default copies [`Reason::as_str`];
    /// override it to return `Cow::Borrowed` for static names.
    fn into_cow(self) -> Cow<'static, str>
    where
        Self: Sized,
    {
        Cow::Owned(self.as_str().to_owned())
    }
}

impl Reason for &'static str {
    fn as_str(&self) -> &str {
        self
    }
    fn into_cow(self) -> Cow<'static, str> {
        Cow::Borrowed(self)
    }
}

impl Reason for String {
    fn as_str(&self) -> &str {
        self
    }
    fn into_cow(self) -> Cow<'static, str> {
        Cow::Owned(self)
    }
}

impl Reason for Cow<'static, str> {
    fn as_str(&self) -> &str {
        self
    }
    fn into_cow(self) -> Cow<'static, str> {
        self
    }
}

/// One event to emit about an object: type, reason, action and an optional note.
///
/// Build it with [`EventData::normal`] or [`EventData::warning`] and add a [`note`](Self::note):
///
/// ```
/// use kuberator::events::{EventData, EventType};
///
/// let data = EventData::normal("Scaled", "Scale").note("scaled to 3 replicas");
/// assert_eq!(data.event_type, EventType::Normal);
/// assert_eq!(data.note.as_deref(), Some("scaled to 3 replicas"));
/// ```
///
/// Events with the same object, type, reason and action are deduplicated (see
/// [`EventRecorder`](super::EventRecorder)); their note does not take part, and the Event keeps
/// the note of the first occurrence.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EventData {
    /// `Normal` or `Warning`.
    pub event_type: EventType,
    /// Why the action was taken, e.g. `ImageMissing`; at most 128 bytes.
    pub reason: Cow<'static, str>,
    /// What was done (or failed), e.g. `Reconcile`; at most 128 bytes.
    pub action: Cow<'static, str>,
    /// A human-readable message; at most 1024 bytes, longer notes end in `...`.
    pub note: Option<String>,
    /// A second object the event is about (the Event's `related` field), e.g. the `Deployment`
    /// an operator created for its custom resource.
    pub related: Option<ObjectReference>,
}

impl EventData {
    /// An event of type `event_type`. Reason and action are cut to 128 bytes.
    pub fn new(event_type: EventType, reason: impl Reason, action: impl Reason) -> Self {
        let mut data = Self {
            event_type,
            reason: reason.into_cow(),
            action: action.into_cow(),
            note: None,
            related: None,
        };
        data.normalize();
        data
    }

    /// A `Normal` event: something happened as expected.
    pub fn normal(reason: impl Reason, action: impl Reason) -> Self {
        Self::new(EventType::Normal, reason, action)
    }

    /// A `Warning` event: something is not working as expected.
    pub fn warning(reason: impl Reason, action: impl Reason) -> Self {
        Self::new(EventType::Warning, reason, action)
    }

    /// Sets the human-readable note. Notes over 1024 bytes are cut at a character boundary and
    /// end in `...` (1024 bytes in all).
    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        let mut note = note.into();
        truncate_note(&mut note);
        self.note = Some(note);
        self
    }

    /// Sets the second object the event is about (the Event's `related` field).
    #[must_use]
    pub fn related(mut self, reference: ObjectReference) -> Self {
        self.related = Some(reference);
        self
    }

    /// Applies the API server's size limits, in case the public fields were set directly.
    pub(crate) fn normalize(&mut self) {
        truncate_cow(&mut self.reason, REASON_MAX_BYTES);
        truncate_cow(&mut self.action, REASON_MAX_BYTES);
        if let Some(note) = &mut self.note {
            truncate_note(note);
        }
    }
}

/// The largest char boundary of `s` that is `<= max`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Cuts `note` to at most [`NOTE_MAX_BYTES`], ending in `...` when cut.
pub(crate) fn truncate_note(note: &mut String) {
    if note.len() <= NOTE_MAX_BYTES {
        return;
    }
    note.truncate(floor_char_boundary(note, NOTE_MAX_BYTES - ELLIPSIS.len()));
    note.push_str(ELLIPSIS);
}

/// Cuts `s` to at most `max` bytes at a char boundary, without copying a static string.
fn truncate_cow(s: &mut Cow<'static, str>, max: usize) {
    if s.len() <= max {
        return;
    }
    let end = floor_char_boundary(s, max);
    match s {
        Cow::Borrowed(b) => *b = b.get(..end).unwrap_or_default(),
        Cow::Owned(o) => o.truncate(end),
    }
}

/// Cuts `s` to at most `max` bytes at a char boundary, keeping the end (the most specific part).
pub(crate) fn keep_tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s.get(start..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_notes_are_kept() {
        let exact = "a".repeat(NOTE_MAX_BYTES);
        let data = EventData::normal("R", "A").note(exact.clone());
        assert_eq!(data.note, Some(exact));
    }

    #[test]
    fn long_notes_are_cut_to_1024_bytes_with_ellipsis() {
        let data = EventData::normal("R", "A").note("a".repeat(5000));
        let note = data.note.unwrap();
        assert_eq!(note.len(), NOTE_MAX_BYTES);
        assert!(note.ends_with("..."));
        assert!(note[..NOTE_MAX_BYTES - 3].bytes().all(|b| b == b'a'));
    }

    #[test]
    fn truncation_respects_multi_byte_boundaries() {
        // Shift a 2-, 3- and 4-byte character across the cut at byte 1021 in every alignment.
        for ch in ['é', '€', '🦀'] {
            for pad in 0..4 {
                let mut note = "x".repeat(pad);
                while note.len() < 2 * NOTE_MAX_BYTES {
                    note.push(ch);
                }
                truncate_note(&mut note);
                assert!(
                    note.len() <= NOTE_MAX_BYTES,
                    "{ch} pad {pad}: {}",
                    note.len()
                );
                assert!(note.len() > NOTE_MAX_BYTES - 3 - ch.len_utf8());
                assert!(note.ends_with("..."));
                let body = note.strip_suffix("...").unwrap();
                assert!(body.chars().skip(pad).all(|c| c == ch), "{ch} pad {pad}");
            }
        }
    }

    #[test]
    fn a_1025_byte_note_with_a_char_across_the_cut() {
        // 1020 ASCII bytes, then a 4-byte crab straddling byte 1021, then one more byte.
        let mut note = "a".repeat(1020);
        note.push('🦀');
        note.push('b');
        assert_eq!(note.len(), 1025);
        truncate_note(&mut note);
        assert_eq!(note, format!("{}...", "a".repeat(1020)));
    }

    #[test]
    fn reasons_and_actions_are_bounded_without_copying_statics() {
        static LONG: &str =
            "ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ";
        assert!(LONG.len() > REASON_MAX_BYTES);
        let data = EventData::warning(LONG, "x".repeat(300));
        assert!(matches!(data.reason, Cow::Borrowed(_)));
        assert_eq!(data.reason.len(), 128);
        assert_eq!(data.action.len(), 128);

        let mut odd = "a".to_owned();
        odd.push_str(&"Ä".repeat(100));
        let data = EventData::warning(odd, "A");
        assert_eq!(data.reason.len(), 127);
    }

    #[test]
    fn normalize_applies_limits_to_fields_set_directly() {
        let mut data = EventData::normal("R", "A");
        data.note = Some("n".repeat(2000));
        data.normalize();
        assert_eq!(data.note.map(|n| n.len()), Some(NOTE_MAX_BYTES));
    }

    #[test]
    fn keep_tail_keeps_the_end_at_a_boundary() {
        assert_eq!(keep_tail("abc", 5), "abc");
        assert_eq!(keep_tail("abcdef", 3), "def");
        assert_eq!(keep_tail("aé", 1), "");
        assert_eq!(keep_tail("aéb", 3), "éb");
    }

    #[test]
    fn reasons_from_strings_and_enums() {
        struct Custom;
        impl Reason for Custom {
            fn as_str(&self) -> &str {
                "Custom"
            }
        }
        assert_eq!(EventData::normal(Custom, "A").reason, "Custom");
        assert_eq!(EventData::normal(String::from("S"), "A").reason, "S");
        assert_eq!(EventType::Warning.to_string(), "Warning");
    }
}
