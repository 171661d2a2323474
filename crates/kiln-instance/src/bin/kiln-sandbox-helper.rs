//! The sandbox helper and VM keeper on their own, for the crate's tests (kiln itself re-runs its
//! own binary).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, flag, spec] if flag == kiln_instance::sandbox::HELPER_ARG => {
            kiln_instance::sandbox::init::helper_main(spec)
        }
        [_, flag, argv] if flag == kiln_instance::vm::keeper::KEEPER_ARG => {
            kiln_instance::vm::keeper::keeper_main(argv)
        }
        _ => {
            eprintln!("kiln-sandbox-helper is started by kiln, not by hand");
            std::process::exit(2);
        }
    }
}
