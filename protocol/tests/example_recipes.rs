//! The recipes shipped in `recipes/` stay valid.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_protocol::{Hash, Recipe, Source};

#[test]
fn hello_c_parses_and_lists_its_options() {
    let text = include_str!("../../recipes/hello-c/recipe.toml");
    let (recipe, signature) = Recipe::from_toml_with_paths(text, &mut |path| {
        assert_eq!(path, "src");
        Ok(Hash::of(b"source archive"))
    })
    .unwrap();
    assert!(signature.is_none());
    assert_eq!(recipe.name, "hello-c");
    assert_eq!(recipe.source, Source::Blob(Hash::of(b"source archive")));
    assert_eq!(recipe.options.keys().collect::<Vec<_>>(), ["greeting", "opt"]);
    let resolved = recipe.resolve_options(&[("opt".into(), "O0".into())]).unwrap();
    assert_eq!(
        recipe.render_steps(&resolved)[0],
        "cc -O0 -DGREETING_plain -o hello hello.c"
    );
}

#[test]
fn pypy_recipe_parses_with_a_pinned_commit_and_translation_options() {
    let text = include_str!("../../recipes/pypy/recipe.toml");
    let (recipe, _) = Recipe::from_toml(text).unwrap();
    assert!(matches!(&recipe.source, Source::Git { rev, .. } if rev.len() == 40));
    let resolved = recipe
        .resolve_options(&[("opt".into(), "2".into()), ("gc".into(), "boehm".into())])
        .unwrap();
    assert!(recipe.render_steps(&resolved)[0].contains("--opt=2 --gc=boehm"));
    assert!(recipe.resolve_options(&[("opt".into(), "3".into())]).is_err());
}
