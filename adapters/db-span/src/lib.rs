#![doc = include_str!("../README.md")]

use proc_macro::TokenStream;
use quote::quote;
use syn::{ImplItem, ItemImpl, LitStr, parse_macro_input, parse_quote};

/// Adds a `db` span to every method of a port's `impl` block (a method that already has an
/// `#[tracing::instrument]`, for extra fields, keeps its own); the argument is `db.system`.
#[proc_macro_attribute]
pub fn db_port(system: TokenStream, item: TokenStream) -> TokenStream {
    let system = parse_macro_input!(system as LitStr);
    let mut block = parse_macro_input!(item as ItemImpl);
    let Some(port) = block
        .trait_
        .as_ref()
        .and_then(|(_, path, _)| path.segments.last())
        .map(|segment| segment.ident.to_string())
    else {
        return syn::Error::new_spanned(&block.self_ty, "#[db_port] goes on a trait's impl block")
            .to_compile_error()
            .into();
    };
    for item in &mut block.items {
        if let ImplItem::Fn(method) = item {
            // A method with a span of its own (extra fields) keeps it.
            let instrumented = method.attrs.iter().any(|a| {
                a.path()
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "instrument")
            });
            if instrumented {
                continue;
            }
            let operation = format!("{port}::{}", method.sig.ident);
            let name = format!("db {operation}");
            method.attrs.push(parse_quote! {
                #[tracing::instrument(
                    level = "debug",
                    name = "db",
                    skip_all,
                    fields(otel.name = #name, db.system = #system, db.operation = #operation)
                )]
            });
        }
    }
    quote!(#block).into()
}
