# Under the SMARTER distribution (the "smarter" distro override: DISTRO =
# "smarter", or DISTROOVERRIDES .= ":smarter" in a distribution of your own)
# rauc-conf installs the board's system.conf from images/rauc/<board>/ and
# the bundles' CA; see classes/smarter_rauc_conf.bbclass. Without the
# override this append changes nothing.
inherit ${@'smarter_rauc_conf' if 'smarter' in (d.getVar('DISTROOVERRIDES') or '').split(':') else ''}
