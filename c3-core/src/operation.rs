//! Which cache operation: one vocabulary for the span names (`c3.get`), the
//! `c3.operation` metric attribute (`get`) and the histogram's attribute
//! tables — as [`Tier`](crate::Tier) and `Outcome` are for where an answer
//! came from and how an operation ended.

/// The operations that get a span and a `c3.operation.duration` measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Get,
    GetMany,
    GetOrLoad,
    Set,
    Delete,
    Invalidate,
    Fill,
}

impl Operation {
    /// Every operation, in the order of their metric attribute indexes.
    pub(crate) const ALL: [Operation; 7] = [
        Operation::Get,
        Operation::GetMany,
        Operation::GetOrLoad,
        Operation::Set,
        Operation::Delete,
        Operation::Invalidate,
        Operation::Fill,
    ];

    /// The `c3.operation` attribute value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::GetMany => "get_many",
            Operation::GetOrLoad => "get_or_load",
            Operation::Set => "set",
            Operation::Delete => "delete",
            Operation::Invalidate => "invalidate",
            Operation::Fill => "fill",
        }
    }

    /// The span's name. A `const fn`: `tracing` keeps a span's name in a
    /// static at its callsite.
    pub(crate) const fn span_name(self) -> &'static str {
        match self {
            Operation::Get => "c3.get",
            Operation::GetMany => "c3.get_many",
            Operation::GetOrLoad => "c3.get_or_load",
            Operation::Set => "c3.set",
            Operation::Delete => "c3.delete",
            Operation::Invalidate => "c3.invalidate",
            Operation::Fill => "c3.fill",
        }
    }

    /// Index in metric attribute tables.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_all_and_span_names_are_the_attribute_prefixed() {
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
            assert_eq!(op.span_name(), format!("c3.{}", op.as_str()));
        }
    }
}
