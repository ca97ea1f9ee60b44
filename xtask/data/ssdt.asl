/*
 * Extra SSDT for the QEMU harness's "d3cold" platform: gives the e1000e at 00:05.0
 * (\_SB.PCI0.S28 in QEMU's q35 DSDT) a platform power resource, so that the kernel picks
 * D3cold for it and calls _OFF/_ON on every runtime suspend/resume. _ON and _OFF write one
 * byte ('1' / '0') to an I/O port that QEMU's isa-debugcon captures into a file.
 * @TRAP_PORT@ is replaced by the harness.
 */
DefinitionBlock ("ssdt.aml", "SSDT", 2, "VFIOPM", "PWRRES", 0x00000001)
{
    External (\_SB.PCI0, DeviceObj)
    External (\_SB.PCI0.S28, DeviceObj)

    Scope (\_SB.PCI0)
    {
        OperationRegion (TRAP, SystemIO, @TRAP_PORT@, One)
        Field (TRAP, ByteAcc, NoLock, Preserve)
        {
            TRPB,   8
        }

        PowerResource (PRS0, 0x00, 0x0000)
        {
            Name (STAT, One)
            Method (_STA, 0, NotSerialized)
            {
                Return (STAT)
            }
            Method (_ON, 0, NotSerialized)
            {
                Store (0x31, TRPB)
                Store (One, STAT)
            }
            Method (_OFF, 0, NotSerialized)
            {
                Store (0x30, TRPB)
                Store (Zero, STAT)
            }
        }
    }

    Scope (\_SB.PCI0.S28)
    {
        Name (_PR0, Package (0x01) { \_SB.PCI0.PRS0 })
        Name (_PR3, Package (0x01) { \_SB.PCI0.PRS0 })
    }
}
