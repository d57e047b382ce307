/**
 * Attach virtio devices to KVM: a microVM monitor in TypeScript that boots a stock Linux bzImage
 * with our virtio-mmio devices declared in ACPI tables, queue notifications through ioeventfd and
 * interrupts through irqfd, and each vCPU running in its own Worker.
 *
 * - {@link MicroVm}: create, run, stop and close a VM.
 * - `boot.ts`: the bzImage loader and the 64-bit entry state ({@link loadLinux},
 *   {@link parseBzImage}, {@link e820Map}, {@link longModeSregs}), pure TypeScript.
 * - `vm.ts`: the KVM ioctls ({@link Kvm}, {@link Vm}, {@link Vcpu}).
 * - `abi.ts`: ioctl numbers and structure layouts of `<linux/kvm.h>`.
 * - `device_memory.ts`: device memory above RAM ({@link DeviceMemorySpace}): windows and memory
 *   slots for devices that have memory of their own (virtio-mem, pmem), the VMM's
 *   `VirtioRegionHandler`.
 * - `acpi.ts`: RSDP, XSDT, FADT, MADT, DSDT and MCFG ({@link writeAcpiTables}), pure TypeScript.
 * - `pci.ts`: with `transport: "pci"`, the host bridge and bus 0 ({@link PciBus}), configuration
 *   mechanism #1 ({@link Conf1Ports}), BAR windows ({@link DEFAULT_PCI_LAYOUT}), INTx wiring.
 * - `exits.ts`, `serial.ts`: exit decoding and the legacy devices (COM1, ACPI registers, i8042
 *   reset).
 *
 * Everything needing `/dev/kvm` checks for it first: {@link MicroVm.available}, and
 * {@link MicroVm.create} throws {@link KvmUnavailableError} (message {@link NO_KVM_REASON}).
 *
 * @example Boot a guest with an entropy device, where KVM exists
 * ```ts ignore
 * import { MicroVm } from "./mod.ts";
 * import { RngDevice } from "../devices/rng.ts";
 * if (MicroVm.available()) {
 *   const vm = MicroVm.create({ kernel, initrd, devices: [new RngDevice()] });
 *   console.log(await vm.run({ timeoutMs: 30_000 }));
 *   vm.close();
 * }
 * ```
 *
 * @module
 */

export {
  _IO,
  _IOC,
  _IOR,
  _IOW,
  _IOWR,
  type CpuidEntry,
  decodeCpuid2,
  decodeRegs,
  decodeSregs,
  encodeCpuid2,
  encodeGsiRouting,
  encodeIoeventfd,
  encodeIrqfd,
  encodeIrqLevel,
  encodeMemoryRegion,
  encodePitConfig,
  encodeRegs,
  encodeSignalMask,
  encodeSregs,
  type GsiRoute,
  IOC_NONE,
  IOC_READ,
  IOC_WRITE,
  KVM_API_VERSION,
  KVM_EXIT_IO_IN,
  KVM_EXIT_IO_OUT,
  KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_DEASSIGN,
  KVM_IOEVENTFD_FLAG_PIO,
  KVM_IRQ_ROUTING_IRQCHIP,
  KVM_IRQ_ROUTING_MSI,
  KVM_IRQFD_FLAG_DEASSIGN,
  KVM_PIT_SPEAKER_DUMMY,
  KvmCap,
  type KvmDtable,
  KvmExit,
  KVMIO,
  KvmIoctl,
  KvmIrqchip,
  type KvmRegs,
  KvmRunOffset,
  type KvmSegment,
  KvmSize,
  type KvmSregs,
  KvmSystemEvent,
  REGS_ORDER,
} from "./abi.ts";
export {
  ACPI_RESET_VALUE,
  ACPI_S5_SLP_TYP,
  ACPI_SLP_EN,
  ACPI_SLP_TYP_SHIFT,
  acpiChecksum,
  type AcpiInfo,
  AcpiLayout,
  type AcpiOptions,
  AcpiPort,
  type AcpiTable,
  dsdtAml,
  eisaId,
  IOAPIC_ADDRESS,
  LAPIC_ADDRESS,
  writeAcpiTables,
} from "./acpi.ts";
export {
  BOOT_GDT,
  BOOT_PARAMS_SIZE,
  BootError,
  type BootErrorCode,
  type BootInfo,
  BootLayout,
  BootParamsOffset,
  BootSelector,
  buildBootParams,
  type BzImage,
  type BzImageHeader,
  CAN_USE_HEAP,
  E820_MAX_ENTRIES,
  type E820Entry,
  e820Map,
  E820Type,
  EFER_LMA,
  EFER_LME,
  HDRS_MAGIC,
  LOADED_HIGH,
  LOADER_TYPE_UNDEFINED,
  loadLinux,
  type LoadLinuxOptions,
  longModeRegs,
  longModeSregs,
  MIN_BOOT_PROTOCOL,
  type MmioDeviceSpec,
  parseBzImage,
  virtioMmioCmdline,
  writeGdt,
  writePageTables,
  X86_CR0_PE,
  X86_CR0_PG,
  X86_CR4_PAE,
  XLF_KERNEL_64,
} from "./boot.ts";
export {
  DEFAULT_DEVICE_MEMORY_BASE,
  type DeviceMemoryRegion,
  DeviceMemorySpace,
  type DeviceMemorySpaceOptions,
  physAddressLimit,
  RAM_SLOT,
  type SetMemorySlot,
} from "./device_memory.ts";
export {
  decodeExit,
  dispatchExit,
  type ExitHandlers,
  I8042_CMD_RESET,
  I8042_COMMAND_PORT,
  I8042_DATA_PORT,
  LegacyIo,
  type LegacyIoOptions,
  type StopReason,
  VcpuError,
  type VcpuErrorCode,
  type VcpuExit,
} from "./exits.ts";
export { COM1_IRQ, COM1_PORT, Serial8250, type Serial8250Options, UartRegister } from "./serial.ts";
export {
  APIC_LVT0,
  APIC_LVT1,
  APIC_MODE_EXTINT,
  APIC_MODE_NMI,
  CPUID_1_ECX_HYPERVISOR,
  CPUID_1_ECX_TSC_DEADLINE,
  CPUID_1_EDX_HTT,
  defaultIrqchipRoutes,
  guestCpuid,
  type GuestCpuidOptions,
  Kvm,
  KvmError,
  kvmRun,
  lvtWithMode,
  NO_KVM_REASON,
  Vcpu,
  Vm,
} from "./vm.ts";
export {
  DEFAULT_CMDLINE,
  DEFAULT_FIRST_IRQ,
  DEFAULT_MEMORY_SIZE,
  DEFAULT_MMIO_BASE,
  DEFAULT_PCI_CMDLINE,
  IDENTITY_MAP_ADDRESS,
  KvmUnavailableError,
  MAX_VCPUS,
  MicroVm,
  type MicroVmOptions,
  type RunResult,
  TSS_ADDRESS,
} from "./vmm.ts";
export {
  BarAllocator,
  Conf1Ports,
  DEFAULT_PCI_LAYOUT,
  intxGsi,
  IntxLines,
  PCI_CONFIG_ADDRESS_PORT,
  PCI_CONFIG_DATA_PORT,
  PCI_FUNCTION_CONFIG_SIZE,
  PCI_HOST_BRIDGE_DEVICE,
  PCI_HOST_BRIDGE_VENDOR,
  PCI_INTX_LINES,
  PCI_SLOTS,
  PciBus,
  PciBusError,
  type PciBusErrorCode,
  type PciBusOptions,
  type PciFunction,
  PciHostBridge,
  type PciLayout,
} from "./pci.ts";
