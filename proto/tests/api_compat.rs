//! The public API is guarded: the current `.proto` files must stay
//! wire-compatible with the last released descriptor set,
//! `proto/released/banger.binpb`, unless the package version is bumped
//! (`banger.vmm.v1` → `banger.vmm.v2`: a package absent from the current set
//! while a higher version of it exists is a bump, not a break). The rules are
//! in `proto/README.md`.
//!
//! Updating the released set is part of cutting a release:
//! `BANGER_BLESS_API=1 cargo test -p banger-proto --test api_compat`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, ServiceDescriptorProto,
};

fn released_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("released/banger.binpb")
}

/// Every message, enum and service of a set, by fully qualified name.
#[derive(Default)]
struct Index {
    packages: BTreeSet<String>,
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
    services: BTreeMap<String, (String, ServiceDescriptorProto)>,
}

fn index(set: &FileDescriptorSet) -> Index {
    fn messages(idx: &mut Index, prefix: &str, list: &[DescriptorProto]) {
        for m in list {
            let name = format!("{prefix}.{}", m.name());
            messages(idx, &name, &m.nested_type);
            for e in &m.enum_type {
                idx.enums.insert(format!("{name}.{}", e.name()), e.clone());
            }
            idx.messages.insert(name, m.clone());
        }
    }
    let mut idx = Index::default();
    for file in &set.file {
        let FileDescriptorProto { package, .. } = file;
        let package = package.clone().unwrap_or_default();
        idx.packages.insert(package.clone());
        let prefix = format!(".{package}");
        messages(&mut idx, &prefix, &file.message_type);
        for e in &file.enum_type {
            idx.enums
                .insert(format!("{prefix}.{}", e.name()), e.clone());
        }
        for s in &file.service {
            idx.services.insert(
                format!("{prefix}.{}", s.name()),
                (package.clone(), s.clone()),
            );
        }
    }
    idx
}

/// `banger.vmm.v1` → (`banger.vmm`, 1).
fn split_version(package: &str) -> Option<(&str, u32)> {
    let (base, last) = package.rsplit_once('.')?;
    let n = last.strip_prefix('v')?;
    let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
    Some((base, digits.parse().ok()?))
}

/// Whether `package` was replaced by a higher version in `current`.
fn bumped(package: &str, current: &Index) -> bool {
    let Some((base, version)) = split_version(package) else {
        return false;
    };
    !current.packages.contains(package)
        && current
            .packages
            .iter()
            .filter_map(|p| split_version(p))
            .any(|(b, v)| b == base && v > version)
}

fn package_of(name: &str, idx: &Index) -> String {
    idx.packages
        .iter()
        .filter(|p| name.starts_with(&format!(".{p}.")))
        .max_by_key(|p| p.len())
        .cloned()
        .unwrap_or_default()
}

fn reserved(m: &DescriptorProto, number: i32) -> bool {
    m.reserved_range
        .iter()
        .any(|r| number >= r.start() && number < r.end())
}

fn field_shape(f: &FieldDescriptorProto) -> (Type, Label, String) {
    (f.r#type(), f.label(), f.type_name().to_owned())
}

/// Every wire-breaking difference from `released` to `current`.
fn breaking_changes(released: &FileDescriptorSet, current: &FileDescriptorSet) -> Vec<String> {
    let old = index(released);
    let new = index(current);
    let mut problems = Vec::new();
    let guarded = |name: &str| !bumped(&package_of(name, &old), &new);

    for (name, m) in old.messages.iter().filter(|(n, _)| guarded(n)) {
        let Some(now) = new.messages.get(name) else {
            problems.push(format!("message {name} was removed"));
            continue;
        };
        for f in &m.field {
            match now.field.iter().find(|g| g.number() == f.number()) {
                Some(g) if field_shape(g) != field_shape(f) => problems.push(format!(
                    "{name}.{} (field {}) changed type: {:?} → {:?}",
                    f.name(),
                    f.number(),
                    field_shape(f),
                    field_shape(g)
                )),
                Some(g) if g.oneof_index.is_some() != f.oneof_index.is_some() => {
                    problems.push(format!("{name}.{} moved into or out of a oneof", f.name()))
                }
                Some(_) => {}
                None if reserved(now, f.number()) => {}
                None => {
                    let moved = now.field.iter().find(|g| g.name() == f.name());
                    problems.push(match moved {
                        Some(g) => format!(
                            "{name}.{} was renumbered {} → {}",
                            f.name(),
                            f.number(),
                            g.number()
                        ),
                        None => format!(
                            "{name}.{} (field {}) was removed without reserving its number",
                            f.name(),
                            f.number()
                        ),
                    });
                }
            }
        }
    }
    for (name, e) in old.enums.iter().filter(|(n, _)| guarded(n)) {
        let Some(now) = new.enums.get(name) else {
            problems.push(format!("enum {name} was removed"));
            continue;
        };
        for v in &e.value {
            let kept = now.value.iter().any(|w| w.number() == v.number());
            let reserved = now
                .reserved_range
                .iter()
                .any(|r| v.number() >= r.start() && v.number() <= r.end());
            if !kept && !reserved {
                problems.push(format!("{name}.{} ({}) was removed", v.name(), v.number()));
            }
        }
    }
    for (name, (_, s)) in old.services.iter().filter(|(n, _)| guarded(n)) {
        let Some((_, now)) = new.services.get(name) else {
            problems.push(format!("service {name} was removed"));
            continue;
        };
        for m in &s.method {
            let Some(n) = now.method.iter().find(|n| n.name() == m.name()) else {
                problems.push(format!("method {name}/{} was removed", m.name()));
                continue;
            };
            let shape = |x: &prost_types::MethodDescriptorProto| {
                (
                    x.input_type().to_owned(),
                    x.output_type().to_owned(),
                    x.client_streaming(),
                    x.server_streaming(),
                )
            };
            if shape(m) != shape(n) {
                problems.push(format!(
                    "method {name}/{} changed: {:?} → {:?}",
                    m.name(),
                    shape(m),
                    shape(n)
                ));
            }
        }
    }
    problems
}

fn current() -> FileDescriptorSet {
    FileDescriptorSet::decode(banger_proto::FILE_DESCRIPTOR_SET).expect("embedded set decodes")
}

#[test]
fn current_api_is_wire_compatible_with_the_released_one() {
    let path = released_path();
    if std::env::var_os("BANGER_BLESS_API").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, banger_proto::FILE_DESCRIPTOR_SET).unwrap();
        eprintln!("wrote {}", path.display());
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the released API must be committed",
            path.display()
        )
    });
    let released = FileDescriptorSet::decode(bytes.as_slice()).expect("released set decodes");
    assert!(
        index(&released).services.len() >= 6,
        "the released set holds the banger services"
    );
    let problems = breaking_changes(&released, &current());
    assert!(
        problems.is_empty(),
        "wire-breaking API changes (bump the package version, or reserve removed numbers; \
         see proto/README.md):\n  {}",
        problems.join("\n  ")
    );
}

// The guard itself must be able to fail: each kind of break, applied to a
// copy of the current set, is reported.

fn mutate(f: impl FnOnce(&mut FileDescriptorSet)) -> Vec<String> {
    let mut changed = current();
    f(&mut changed);
    breaking_changes(&current(), &changed)
}

fn vmm_file(set: &mut FileDescriptorSet) -> &mut FileDescriptorProto {
    set.file
        .iter_mut()
        .find(|f| f.package() == "banger.vmm.v1")
        .unwrap()
}

fn message<'a>(file: &'a mut FileDescriptorProto, name: &str) -> &'a mut DescriptorProto {
    file.message_type
        .iter_mut()
        .find(|m| m.name() == name)
        .unwrap()
}

#[test]
fn guard_reports_each_kind_of_break() {
    assert!(mutate(|_| {}).is_empty(), "identical sets are compatible");
    let removed = mutate(|s| {
        message(vmm_file(s), "CreateVmRequest")
            .field
            .retain(|f| f.name() != "image")
    });
    assert!(removed[0].contains("CreateVmRequest.image"), "{removed:?}");
    let renumbered = mutate(|s| {
        let m = message(vmm_file(s), "CreateVmRequest");
        m.field
            .iter_mut()
            .find(|f| f.name() == "nat")
            .unwrap()
            .number = Some(99);
    });
    assert!(
        renumbered[0].contains("renumbered 7 → 99"),
        "{renumbered:?}"
    );
    let retyped = mutate(|s| {
        let m = message(vmm_file(s), "CreateVmRequest");
        let f = m.field.iter_mut().find(|f| f.name() == "vcpus").unwrap();
        f.set_type(Type::String);
    });
    assert!(retyped[0].contains("changed type"), "{retyped:?}");
    let method = mutate(|s| {
        vmm_file(s).service[0]
            .method
            .retain(|m| m.name() != "ListVms")
    });
    assert!(method[0].contains("ListVms was removed"), "{method:?}");
    let streaming = mutate(|s| {
        let m = vmm_file(s).service[0]
            .method
            .iter_mut()
            .find(|m| m.name() == "GetVm")
            .unwrap();
        m.server_streaming = Some(true);
    });
    assert!(streaming[0].contains("GetVm changed"), "{streaming:?}");
    let service = mutate(|s| vmm_file(s).service.clear());
    assert!(
        service[0].contains("service .banger.vmm.v1.Vmm was removed"),
        "{service:?}"
    );
}

#[test]
fn additions_reservations_and_version_bumps_are_allowed() {
    // A new field, and a removed one whose number is reserved.
    let fine = mutate(|s| {
        let m = message(vmm_file(s), "CreateVmRequest");
        let mut extra = m.field[0].clone();
        extra.name = Some("new_thing".into());
        extra.number = Some(100);
        m.field.push(extra);
        m.field.retain(|f| f.name() != "nat");
        m.reserved_range
            .push(prost_types::descriptor_proto::ReservedRange {
                start: Some(7),
                end: Some(8),
            });
    });
    assert!(fine.is_empty(), "{fine:?}");
    // banger.vmm.v1 replaced by banger.vmm.v2: a bump, not a break.
    let bumped = mutate(|s| {
        let f = vmm_file(s);
        f.package = Some("banger.vmm.v2".into());
        f.message_type.clear();
        f.service.clear();
    });
    assert!(bumped.is_empty(), "{bumped:?}");
}
