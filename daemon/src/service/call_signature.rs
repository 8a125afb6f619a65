//! The argument signature of each call, checked before the handler that
//! zbus generates sees it. That handler answers a call whose arguments do
//! not deserialize with `org.freedesktop.zbus.Error` (zbus 5's
//! `#[interface]` turns the deserialization error into `fdo::Error::ZBus`,
//! and offers no hook); a caller should get the standard
//! `org.freedesktop.DBus.Error.InvalidArgs`, naming what was expected.

use std::collections::HashMap;

use zbus::message::{Header, Message};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult2, Interface, ObjectServer, SignalEmitter};
use zbus::zvariant::{OwnedValue, Value};
use zbus::{fdo, Connection};

/// Interface `I`, whose methods listed in `methods` (name, argument
/// signature) are refused with `InvalidArgs` when called with other
/// arguments. Everything else goes to `I` unchanged.
#[derive(Debug)]
pub struct SignatureChecked<I> {
    inner: I,
    methods: &'static [(&'static str, &'static str)],
}

impl<I> SignatureChecked<I> {
    /// `inner`, with its methods' argument signatures.
    pub fn new(inner: I, methods: &'static [(&'static str, &'static str)]) -> Self {
        Self { inner, methods }
    }

    /// The wrapped interface (to emit its property changes).
    pub fn inner(&self) -> &I {
        &self.inner
    }

    /// Why a call of `method` with arguments of signature `got` is refused;
    /// `None` when it has the method's signature (or is not listed).
    fn mismatch(&self, method: &str, got: &str) -> Option<String> {
        let (_, want) = self.methods.iter().find(|(m, _)| *m == method)?;
        (got != *want)
            .then(|| format!("{method} takes arguments of signature \"{want}\", not \"{got}\""))
    }
}

/// A body's signature as D-Bus writes it: the arguments' types one after
/// another, without the parentheses zvariant puts around several.
fn arguments_signature(msg: &Message) -> String {
    let body = msg.body();
    let text = body.signature().to_string();
    match text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        // Several arguments: zvariant shows them as one structure.
        Some(inner) if is_whole_structure(&text) => inner.to_owned(),
        _ => text,
    }
}

/// Whether `text` is one structure `(...)` whose opening parenthesis closes
/// at its very end (and not, for example, `(s)(s)`).
fn is_whole_structure(text: &str) -> bool {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 && i + 1 != text.len() {
                    return false;
                }
            }
            _ => {}
        }
    }
    text.starts_with('(')
}

#[zbus::export::async_trait::async_trait]
impl<I: Interface> Interface for SignatureChecked<I> {
    fn name() -> InterfaceName<'static> {
        I::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.inner.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<OwnedValue>> {
        self.inner
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        self.inner
            .get_all(server, connection, header, emitter)
            .await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Value<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult2<'call> {
        self.inner
            .set(property_name, value, server, connection, header, emitter)
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Value<'_>,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<()>> {
        self.inner
            .set_mut(property_name, value, server, connection, header, emitter)
            .await
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        match self.mismatch(name.as_str(), &arguments_signature(msg)) {
            Some(why) => DispatchResult2::new_async(connection, msg, async move {
                Err::<(), _>(fdo::Error::InvalidArgs(why))
            }),
            None => self.inner.call(server, connection, msg, name),
        }
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        match self.mismatch(name.as_str(), &arguments_signature(msg)) {
            Some(why) => DispatchResult2::new_async(connection, msg, async move {
                Err::<(), _>(fdo::Error::InvalidArgs(why))
            }),
            None => self.inner.call_mut(server, connection, msg, name),
        }
    }

    fn introspect_to_writer(&self, writer: &mut dyn std::fmt::Write, level: usize) {
        self.inner.introspect_to_writer(writer, level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structure_of_arguments_is_unwrapped_but_one_structure_argument_is_not() {
        assert!(is_whole_structure("(sa{sv})"));
        assert!(!is_whole_structure("(s)(s)"));
        assert!(!is_whole_structure("sa{sv}"));
    }
}
