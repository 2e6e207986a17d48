// Vulkan-Hpp as ggml-vulkan.cpp expects it, for Vulkan headers older than
// VK_EXT_layer_settings (Debian 12 ships 1.3.239). make vulkan puts this
// directory first on the include path; the header includes the system one
// and, when the extension is missing, adds the three types ggml-vulkan
// uses, laid out like the C structures of the Vulkan specification
// (VkLayerSettingEXT, VkLayerSettingsCreateInfoEXT). ggml only chains the
// create info into vkCreateInstance, where a loader without the extension
// ignores it.
#pragma once
#include_next <vulkan/vulkan.hpp>

#ifndef VK_EXT_layer_settings
namespace VULKAN_HPP_NAMESPACE {

enum class LayerSettingTypeEXT : int32_t {
	eBool32 = 0,
	eInt32 = 1,
	eInt64 = 2,
	eUint32 = 3,
	eUint64 = 4,
	eFloat32 = 5,
	eFloat64 = 6,
	eString = 7,
};

struct LayerSettingEXT {
	const char *pLayerName;
	const char *pSettingName;
	LayerSettingTypeEXT type;
	uint32_t valueCount;
	const void *pValues;
};

struct LayerSettingsCreateInfoEXT {
	LayerSettingsCreateInfoEXT(ArrayProxyNoTemporaries<const LayerSettingEXT> const &settings, const void *next = nullptr)
		: pNext(next), settingCount(static_cast<uint32_t>(settings.size())), pSettings(settings.data()) {}

	StructureType sType = static_cast<StructureType>(1000496000); // VK_STRUCTURE_TYPE_LAYER_SETTINGS_CREATE_INFO_EXT
	const void *pNext;
	uint32_t settingCount;
	const LayerSettingEXT *pSettings;
};

} // namespace VULKAN_HPP_NAMESPACE
#endif
