using System.Diagnostics;

namespace SdFunctions.Inference.Runtime;

/// <summary>
/// This process's resident memory, and a peak that can be restarted so that one generation's peak is its own. Linux keeps
/// both in /proc/self/status (VmRSS, VmHWM) and restarts the peak when "5" is written to /proc/self/clear_refs; elsewhere
/// the peak is the process's lifetime peak and cannot be restarted.
/// </summary>
public static class ProcessMemory
{
    private const string Status = "/proc/self/status", ClearRefs = "/proc/self/clear_refs";

    public static long Resident => StatusBytes("VmRSS:") ?? Process.GetCurrentProcess().WorkingSet64;

    public static long Peak => StatusBytes("VmHWM:") ?? Process.GetCurrentProcess().PeakWorkingSet64;

    /// <summary>Restarts <see cref="Peak"/> at the current resident size; false where the OS does not allow it.</summary>
    public static bool ResetPeak()
    {
        if (!OperatingSystem.IsLinux()) return false;
        try
        {
            File.WriteAllText(ClearRefs, "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    /// <summary>A size line of /proc/self/status (e.g. "RssAnon:") in bytes; null off Linux.</summary>
    public static long? StatusBytes(string key)
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            foreach (string line in File.ReadLines(Status))
                if (line.StartsWith(key, StringComparison.Ordinal) && long.TryParse(line[key.Length..].Trim().Split(' ')[0], out long kb))
                    return kb * 1024;
        }
        catch (IOException) { }
        return null;
    }
}
